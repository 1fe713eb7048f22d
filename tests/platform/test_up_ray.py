"""`mec up --ray-nodes 2`: a local Ray cluster of 2 nodes (a `ray start` each) beside the
stack, whose worker runs a 2-node job on it, and which refuses a client without its token;
after a kill -9 of a node `mec up` starts the cluster again, and `mec down` leaves no
process of it. A negative count is refused before anything starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from serving.process_groups import group_members
from serving.torchserve import unused_ports

TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "proj_hidden_dim": 64, "pred_hidden_dim": 16, "train_limit": 256, "log_every": 2,
        "checkpoint_every": 10, "warmup_epochs": 0.2, "lambda_warmup_epochs": 0.2,
        "base_lr": 0.01, "precision": "fp32", "monitor_every": 0, "max_steps": 8,
        "epochs": 2, "nodes": 2, "processes": 1}


def mec(env, *args, check=True):
    done = subprocess.run([sys.executable, "-m", "mec_client", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert not check or done.returncode == 0, done.stdout + done.stderr
    return done


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MEC_")} | {
        "OMP_NUM_THREADS": "1"}


def test_up_refuses_a_negative_count_of_ray_nodes(tmp_path):
    done = mec(_env(), "up", "--data-dir", str(tmp_path), "--ray-nodes", "-1", check=False)
    assert done.returncode == 2 and "--ray-nodes" in done.stderr
    assert not (tmp_path / "run").exists()  # nothing started


@pytest.mark.slow  # about a minute and a half on 2 cores: `make test-slow`
def test_up_with_ray_nodes_runs_a_job_of_two_nodes_and_down_stops_them(tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install '.[ray]')")
    env, data = _env(), tmp_path / "stack"
    ports = unused_ports(6)
    flags = [f"--{what}-port={port}" for what, port in zip(
        ("api", "inference", "management", "metrics", "worker-metrics", "ray"), ports)]
    started = time.monotonic()
    up = mec(env, "up", "--data-dir", str(data), "--ray-nodes", "2", *flags)
    print(f"\nmec up --ray-nodes 2: {time.monotonic() - started:.1f} s")
    assert f"127.0.0.1:{ports[5]}" in up.stdout
    run = data / "run"
    nodes = [int((run / f"ray-{i}.pid").read_text()) for i in (0, 1)]
    try:
        key = mec(env | {"MEC_DATA_DIR": str(data)}, "keys", "create", "--name", "t"
                  ).stdout.strip()
        api = httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}", timeout=60,
                           headers={"Authorization": f"Bearer {key}"})
        made = api.post("/v1/jobs", json={"kind": "pretrain", "name": "two-nodes",
                                          "config": TINY})
        assert made.status_code == 201, made.text  # the API was given MEC_RAY_ADDRESS
        job = _wait_done(api, made.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        assert [(s["node"], s["ranks"], s["state"]) for s in job["slots"]] == \
            [(0, [0], "finished"), (1, [1], "finished")]

        # the cluster takes only clients with its token, which the worker has, not the API
        environ = {n: psutil.Process(int((run / f"{n}.pid").read_text())).environ()
                   for n in ("api", "worker")}
        assert "RAY_AUTH_TOKEN" not in environ["api"]
        assert environ["worker"]["RAY_AUTH_TOKEN"] == json.loads(
            (run / "ray.json").read_text())["token"]
        assert (run / "ray.json").stat().st_mode & 0o777 == 0o600
        stranger = subprocess.run(
            [sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{ports[5]}')"],
            env=env, capture_output=True, text=True, timeout=120)
        assert stranger.returncode != 0 and "ConnectionError" in stranger.stderr, \
            stranger.stderr[-2000:]

        # kill -9 of a node's `ray start`: `mec up` starts the cluster again, whole
        os.kill(nodes[1], signal.SIGKILL)
        again = mec(env, "up", "--data-dir", str(data))
        assert f"127.0.0.1:{ports[5]}" in again.stdout  # the same head port
        restarted = [int((run / f"ray-{i}.pid").read_text()) for i in (0, 1)]
        assert not set(restarted) & set(nodes)
        assert not [pid for pid in nodes if group_members(pid)]  # the old nodes' processes
        nodes = restarted
    finally:
        down = mec(env, "down", "--data-dir", str(data))
    assert down.stdout.strip() == "stopped: ray-0, ray-1, torchserve, api, worker"
    assert not [pid for pid in nodes if group_members(pid)]  # no raylet, GCS nor Ray worker
    assert not list(run.glob("*.pid"))


def _wait_done(api: httpx.Client, job_id: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
