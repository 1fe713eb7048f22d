"""The local Ray cluster of `mec up --ray-nodes N`: N Ray nodes on this machine, each its
own `ray start --block` process (a raylet with its own share of the machine's CPUs and
GPUs), the first the head whose GCS the others and the stack's processes join. Jobs of
several nodes then run here as they run on a cluster of hosts (worker.ray_run); the
launcher itself does not import Ray.

Separate `ray start` processes rather than one process simulating N nodes
(ray.cluster_utils, which the tests use): each node is a process group of its own, which
`mec down` and `mec up` after a kill -9 stop as they stop the stack's other processes,
and the nodes are started as an operator starts those of a real cluster.

Ray's GCS and raylets listen on every interface of the machine; the cluster takes only
clients that hold its token (Ray's token authentication), which the stack gives its nodes
and its worker alone."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

READY = b"Ray runtime started."  # what `ray start` prints once its node runs
OBJECT_STORE_BYTES = 256 * 2**20  # each node's: the runs pass little through it, and N
# nodes on one machine would each take 30 % of its memory by default


def new_token() -> str:
    return secrets.token_hex(32)


def auth(token: str) -> dict[str, str]:
    """The environment of a process that may use the cluster (a node, a run's driver)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


def address(port: int) -> str:
    """The head's GCS, as MEC_RAY_ADDRESS gives it to the stack's processes."""
    return f"127.0.0.1:{port}"


def command(node: int, nodes: int, port: int, agent_port: int) -> tuple[list[str], dict]:
    """`ray start` of node `node` of `nodes` (0: the head, its GCS on `port`; each node's
    agent on a port of its own, as they share the machine) and the environment it adds."""
    cpus, gpus = share(node, nodes)
    args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
            "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", f"--num-gpus={len(gpus)}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--dashboard-agent-listen-port={agent_port}"]
    if node == 0:
        args += ["--head", f"--port={port}", "--include-dashboard=false",
                 "--disable-usage-stats"]
    else:
        args.append(f"--address={address(port)}")
    return args, {"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {}


def share(node: int, nodes: int) -> tuple[int, list[str]]:
    """Node `node`'s CPUs (the machine's divided evenly, at least one) and GPUs (the
    visible ones in even blocks; what does not divide is left out, so that every node
    holds as many)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g for g in visible.split(",") if g] if visible is not None else sorted(
        (p.name.removeprefix("nvidia") for p in Path("/dev").glob("nvidia[0-9]*")), key=int)
    each = len(gpus) // nodes
    return max(1, (os.cpu_count() or 1) // nodes), gpus[node * each:(node + 1) * each]
