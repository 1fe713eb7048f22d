"""What running jobs of several nodes on Ray costs and how fast it recovers, in one run:

1. install: the distributions the `ray` extra adds to the platform's own (Ray Train and
   what it needs that the platform does not), their count and size on disk;
2. start: `import ray.train.torch` in a fresh process beyond `import torch`; a local
   2-node cluster (`mec up --ray-nodes 2`'s `ray start` pair) until both nodes run;
   submit to first step of a 2-node x 1-process job on Ray against a 1-node x 2-process
   job (torchrun), through the platform's API and worker;
3. a lost node: a 2-node job on a cluster of simulated nodes (ray.cluster_utils) loses
   its second node at step 25, killed without warning, and a new node joins at once (as
   an autoscaler or KubeRay would bring one): the time until Ray reports the loss (the
   job's attempts go up) and until the run's resumed step is written.

    python bench/bench_ray.py --json > docs/performance/ray/…json
    python bench/bench_ray.py --report docs/performance/ray/*.json
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import httpx
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from records import add_options, emit, host, reported

from mec_platform import local_ray
from mec_platform.stack import Ports, Stack
from serving.process_groups import stop_groups
from serving.torchserve import unused_ports

JOB = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
       "proj_hidden_dim": 64, "pred_hidden_dim": 16, "train_limit": 256, "log_every": 1,
       "checkpoint_every": 10, "warmup_epochs": 0.2, "lambda_warmup_epochs": 0.2,
       "base_lr": 0.01, "precision": "fp32", "monitor_every": 0}
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


def _closure(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    """Distribution `name` and every one it needs (with `extras`), as installed here."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(name, extras)]
    while todo:
        dist, wanted = todo.pop()
        if (canonicalize_name(dist), wanted) in seen:
            continue
        try:
            requires = metadata.distribution(dist).requires or []
        except metadata.PackageNotFoundError:
            continue
        seen.add((canonicalize_name(dist), wanted))
        for line in requires:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e})
                                         for e in ("", *wanted)):
                todo.append((req.name, tuple(sorted(req.extras))))
    return {dist for dist, _ in seen}


def install() -> dict:
    """What `pip install '.[ray]'` adds to `pip install .`: distributions and megabytes."""
    base = _closure("mec-platform")
    added = sorted(_closure("ray", ("train",)) - base)
    size = 0
    for name in added:
        dist = metadata.distribution(name)
        size += sum(f.size or 0 for f in dist.files or [])
    return {"distributions": len(added), "megabytes": round(size / 2**20, 1),
            "ray": metadata.version("ray")}


def _import_seconds(module: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cluster_start(root: Path) -> float:
    """Seconds until both nodes of a local 2-node cluster run (the head first), with a
    token as `mec up --ray-nodes 2` starts them."""
    port, *agents = unused_ports(3)
    started, groups, token = time.perf_counter(), [], local_ray.auth(local_ray.new_token())
    try:
        for node in (0, 1):
            args, env = local_ray.command(node, 2, port, agents[node])
            env |= token
            log = root / f"ray-{node}.log"
            with log.open("wb") as out:
                groups.append(subprocess.Popen(args, env=os.environ | env, stdout=out,
                                               stderr=subprocess.STDOUT,
                                               start_new_session=True).pid)
        while not all(local_ray.READY in (root / f"ray-{n}.log").read_bytes() for n in (0, 1)):
            time.sleep(0.2)
        return time.perf_counter() - started
    finally:
        stop_groups(groups, timeout=0)


class Platform:
    """The local stack (API, worker, TorchServe) pointed at `address`."""

    def __init__(self, root: Path, address: str) -> None:
        os.environ.update({"MEC_RAY_ADDRESS": address, "OMP_NUM_THREADS": "1",
                           "MEC_WORKER_PROCESSES": "2", "MEC_MAX_ATTEMPTS": "3"})
        self.stack = Stack(root / "stack", Ports.any_free())
        self.stack.up(timeout=300)
        self.api = httpx.Client(base_url=self.stack.api_url, timeout=60, headers={
            "Authorization": f"Bearer {self.stack.create_key('bench')}"})

    def submit(self, steps: int, nodes: int, processes: int, **extra) -> int:
        config = JOB | {"max_steps": steps, "epochs": steps // 8 + 1, "nodes": nodes,
                        "processes": processes} | extra
        made = self.api.post("/v1/jobs", json={"kind": "pretrain", "name": "bench",
                                               "config": config})
        made.raise_for_status()
        return made.json()["id"]

    def job(self, job_id: int) -> dict:
        return self.api.get(f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: int, done, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if done(job):
                return job
            if job["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id}: {self.job(job_id)}")

    def first_step(self, nodes: int, processes: int) -> float:
        """Submit to the first step written, for a job of nodes x processes."""
        started = time.perf_counter()
        job_id = self.submit(4, nodes, processes)
        self.wait(job_id, lambda j: j["progress"]["step"] >= 1)
        seconds = time.perf_counter() - started
        self.wait(job_id, lambda j: j["status"] == "succeeded")
        return seconds

    def resumed_from(self, job_id: int) -> int | None:
        """The step of the checkpoint the job's run resumed from, once its log says so."""
        lines = self.api.get(f"/v1/jobs/{job_id}/logs").json()["lines"]
        return next((int(m[1]) for line in lines
                     if (m := re.search(r"resumed from \S+step_(\d+)\.pt", line["line"]))),
                    None)

    def metric_time(self, job_id: int, step: int) -> datetime | None:
        """When the job's loss at `step` was written (its last writing)."""
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from mec_platform.db import make_engine
        from mec_platform.tables import Metric

        engine = make_engine(self.stack.settings.database_url)
        try:
            with Session(engine) as s:
                when = s.scalar(select(Metric.time).where(
                    Metric.job_id == job_id, Metric.step == step, Metric.name == "loss"))
        finally:
            engine.dispose()
        return when and (when if when.tzinfo else when.replace(tzinfo=timezone.utc))

    def close(self) -> None:
        self.api.close()
        self.stack.down()


def lost_node(platform: Platform, cluster, spare) -> dict:
    """A 2-node job whose second node is killed at step 25 and replaced at once."""
    job_id = platform.submit(60, 2, 1)
    platform.wait(job_id, lambda j: j["progress"]["step"] >= 25)
    lost = datetime.now(timezone.utc)
    cluster.remove_node(spare, allow_graceful=False)  # its processes killed, no goodbye
    cluster.add_node(**NODE)
    platform.wait(job_id, lambda j: j["attempts"] >= 2)
    detected = (datetime.now(timezone.utc) - lost).total_seconds()
    resumed = _until(lambda: platform.resumed_from(job_id), "the run to resume")
    when = _until(lambda: (w := platform.metric_time(job_id, resumed + 1)) and w > lost and w,
                  "the resumed step")
    done = platform.wait(job_id, lambda j: j["status"] == "succeeded")
    return {"lost_at_step": 25, "resumed_from_step": resumed,
            "loss_reported_seconds": round(detected, 1),
            "lost_to_resumed_step_seconds": round((when - lost).total_seconds(), 1),
            "attempts": done["attempts"]}


def _until(value, what: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while (found := value()) is None or found is False:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout} s")
        time.sleep(0.2)
    return found


def run() -> dict:
    from ray.cluster_utils import Cluster

    record = {"install": install(),
              "import_torch_seconds": round(_import_seconds("torch"), 2),
              "import_ray_train_torch_seconds": round(_import_seconds("ray.train.torch"), 2)}
    with tempfile.TemporaryDirectory(prefix="mec-bench-ray-") as tmp:
        root = Path(tmp)
        record["local_cluster_start_seconds"] = round(cluster_start(root), 1)
        cluster = Cluster(initialize_head=True, head_node_args=NODE | {
            "include_dashboard": False})
        spare = cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        platform = Platform(root, cluster.address)
        try:
            record["first_step_seconds"] = {
                "torchrun 1x2": round(platform.first_step(1, 2), 1),
                "ray 2x1": round(platform.first_step(2, 1), 1)}
            record["lost_node"] = lost_node(platform, cluster, spare)
        finally:
            platform.close()
            cluster.shutdown()
    return {"bench": "ray", "when": time.strftime("%Y-%m-%d %H:%M"), "host": host(),
            "command": " ".join(["python", "bench/bench_ray.py", *sys.argv[1:]])} | record


def markdown(r: dict) -> str:
    i, first, lost = r["install"], r["first_step_seconds"], r["lost_node"]
    ray_import = r["import_ray_train_torch_seconds"] - r["import_torch_seconds"]
    return (f"Ray {i['ray']}, {r['when']} ({r['host']['cpu']}, {r['host']['cores']} cores; "
            f"`{r['command']}`):\n\n| what | figure |\n|---|---|\n"
            f"| install: what the `ray` extra adds | {i['distributions']} distributions, "
            f"{i['megabytes']:.0f} MB |\n"
            f"| `import ray.train.torch` beyond `import torch` | {ray_import:.1f} s |\n"
            f"| a local 2-node cluster until both nodes run (`mec up --ray-nodes 2`'s part) "
            f"| {r['local_cluster_start_seconds']:.1f} s |\n"
            f"| submit to first step: 2 nodes x 1 process on Ray vs 1 node x 2 processes "
            f"(torchrun) | {first['ray 2x1']:.1f} s vs {first['torchrun 1x2']:.1f} s |\n"
            f"| a node lost at step {lost['lost_at_step']} (killed): Ray reports it "
            f"(attempts + 1) | {lost['loss_reported_seconds']:.1f} s |\n"
            f"| a node lost: to the resumed step {lost['resumed_from_step'] + 1} written "
            f"(restart from step {lost['resumed_from_step']}) "
            f"| {lost['lost_to_resumed_step_seconds']:.1f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser)
    args = parser.parse_args()
    if not reported(args, markdown):
        emit(args, run(), markdown)


if __name__ == "__main__":
    main()
