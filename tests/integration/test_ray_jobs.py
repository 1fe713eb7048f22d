"""Jobs of several nodes (config.nodes) on a real Ray cluster of 2 nodes of 1 CPU each on
this machine (ray.cluster_utils: a head and a worker node, each its own raylet), through
the real API and Celery workers (gloo): the loss curve of 2 nodes x 1 process is that of
1 node x 2 processes with the same global batch; a node removed mid-run restarts the run
from its checkpoint and the job succeeds with every step's metrics once; a cancel stops
every rank; two 2-node jobs on a cluster with room for one run one after the other; a
SIGTERM of the claiming worker hands the run over with a checkpoint, and its kill -9 stops
the run, whose job resumes on the other worker."""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import datetime, timezone

import psutil
import psycopg
import pytest
from harness import base_env, open_platform, postgres_and_redis
from test_multiprocess import TINY, _losses

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install '.[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

WORKER_NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
NODE = WORKER_NODE | {"include_dashboard": False}


@pytest.fixture(scope="module")
def cluster():
    """2 nodes of 1 CPU each: room for one 2-node job; this process is a driver of it too
    (to read its free resources)."""
    cluster = Cluster(initialize_head=True, head_node_args=NODE)
    cluster.spare = cluster.add_node(**WORKER_NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def platform(cluster, tmp_path_factory):
    """API and two Celery workers (each can drive a Ray run) on PostgreSQL and Redis,
    pointed at the cluster."""
    root = tmp_path_factory.mktemp("ray")
    with postgres_and_redis() as backing:
        env = base_env(root) | backing | {"MEC_RAY_ADDRESS": cluster.address}
        plat = open_platform(root, env, "postgres+redis")
        try:
            plat.start_api()
            plat.start_worker("w1")
            plat.start_worker("w2")
            yield plat
        finally:
            plat.stop()


def pretrain(platform, steps, nodes, processes, **extra):
    config = TINY | {"max_steps": steps, "epochs": steps // 8 + 1, "nodes": nodes,
                     "processes": processes}
    return platform.post("/v1/jobs", {"kind": "pretrain", "name": f"{nodes}x{processes}",
                                      "queue": "gpu", "config": config | extra})


def test_two_nodes_follow_the_losses_of_two_processes_on_one(platform):
    two_nodes = pretrain(platform, 8, 2, 1, log_every=1)
    one_node = pretrain(platform, 8, 1, 2, log_every=1)
    for job in (two_nodes, one_node):
        done = platform.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
        assert done["status"] == "succeeded", done["error"]
    a, b = _losses(platform, one_node["id"]), _losses(platform, two_nodes["id"])
    assert a["steps"] == b["steps"] == list(range(1, 9))
    for x, y in zip(a["values"], b["values"]):
        assert y == pytest.approx(x, abs=1e-4)
    job = platform.get(f"/v1/jobs/{two_nodes['id']}")
    assert [(s["node"], s["ranks"], s["state"]) for s in job["slots"]] == \
        [(0, [0], "finished"), (1, [1], "finished")]
    assert job["attempts"] == 1 and job["error"] is None
    assert two_nodes["id"] in {m["job_id"] for m in platform.get("/v1/models")["data"]}
    lines = platform.get(f"/v1/jobs/{two_nodes['id']}/logs")["lines"]
    assert any("rank 1 of 2 on cpu" in line["line"] for line in lines), lines[-30:]


def _job(platform, job):
    return platform.get(f"/v1/jobs/{job['id']}")


def _free_cpus() -> float:
    return ray.available_resources().get("CPU", 0)


@pytest.mark.slow  # minutes on 2 cores: `make test-slow`
def test_a_lost_node_restarts_the_run_from_its_checkpoint(platform, cluster):
    """The worker node goes away at step 25 and a new one joins (as an autoscaler or
    KubeRay would bring one): Ray restarts both ranks, which resume from step 20."""
    job = pretrain(platform, 60, 2, 1, log_every=1, checkpoint_every=10)
    platform.wait_for(lambda: _job(platform, job)["progress"]["step"] >= 25, 240, "step 25")
    lost = datetime.now(timezone.utc)
    cluster.remove_node(cluster.spare)
    cluster.spare = cluster.add_node(**WORKER_NODE)
    restarted = platform.wait_for(lambda: (j := _job(platform, job))["attempts"] == 2 and j,
                                  120, "the run to restart")
    assert re.search(r"rank \d \(node \d, host \S+\) was lost first: \w+", restarted["error"]) \
        and "restarts from its last checkpoint (attempt 2 of 3)" in restarted["error"], \
        restarted["error"]
    done = platform.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["error"] is None
    assert _metric_steps(platform, job) == list(range(1, 61))  # each step's once
    lines = [line["line"] for line in platform.get(f"/v1/jobs/{job['id']}/logs")["lines"]]
    assert any("was lost first" in line for line in lines)
    start = int(next(m[1] for line in lines
                     if (m := re.search(r"resumed from \S+step_(\d+)\.pt", line))))
    assert start in (20, 30)
    url = platform.env["MEC_DATABASE_URL"].replace("+psycopg", "")
    with psycopg.connect(url) as conn:  # the resumed step's metrics, written anew
        (resumed,) = conn.execute("SELECT min(time) FROM metrics WHERE job_id = %s AND "
                                  "step = %s", (job["id"], start + 1)).fetchone()
    print(f"\nlost node -> resumed step {start + 1}: "
          f"{(resumed.astimezone(timezone.utc) - lost).total_seconds():.1f} s")


def _metric_steps(platform, job) -> list[int]:
    return _losses(platform, job["id"])["steps"]


@pytest.mark.slow  # minutes on 2 cores: `make test-slow`
def test_cancel_stops_every_rank(platform):
    job = pretrain(platform, 4000, 2, 1)
    platform.wait_for(lambda: _job(platform, job)["progress"]["step"] >= 4, 240, "step 4")
    assert _free_cpus() == 0
    asked = time.monotonic()
    platform.post(f"/v1/jobs/{job['id']}/cancel", expect=200)
    done = platform.wait_status(job["id"], ("cancelled", "succeeded", "failed"), timeout=60)
    assert done["status"] == "cancelled" and 4 <= done["result"]["steps"] < 4000
    platform.wait_for(lambda: _free_cpus() == 2, 30, "both ranks' CPUs back")
    print(f"\ncancel -> every rank gone: {time.monotonic() - asked:.1f} s")
    assert {s["state"] for s in done["slots"]} == {"stopped"}


@pytest.mark.slow  # minutes on 2 cores: `make test-slow`
def test_two_jobs_of_two_nodes_on_room_for_one_run_one_after_the_other(platform):
    first, second = (pretrain(platform, 30, 2, 1, seed=seed) for seed in (1, 2))
    platform.wait_for(lambda: _job(platform, first)["progress"]["step"] > 0 or
                      _job(platform, second)["progress"]["step"] > 0, 240, "one to start")
    running, waiting = (first, second) if _job(platform, first)["progress"]["step"] \
        else (second, first)
    told = platform.wait_for(lambda: (j := _job(platform, waiting))["waiting"] and j, 30,
                             "the second job to say why it waits")
    assert told["status"] == "running" and told["waiting"] == \
        "needs 2 nodes with 1 CPU each; the cluster has 0 free", told
    assert {s["state"] for s in told["slots"]} == {"pending"}
    while _job(platform, running)["status"] == "running":
        assert _job(platform, waiting)["progress"]["step"] == 0  # not while the other runs
        time.sleep(0.5)
    for job in (running, waiting):
        done = platform.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
        assert done["status"] == "succeeded", done["error"]
        assert done["waiting"] is None


def _driver(platform, worker: str) -> psutil.Process:
    """The Ray driver (`python -m worker.ray_run`) that `worker` started."""
    return platform.wait_for(lambda: next(
        (p for p in psutil.Process(platform.workers[worker].pid).children()
         if "worker.ray_run" in " ".join(p.cmdline())), None), 30, f"the driver of {worker}")


@pytest.mark.slow  # minutes on 2 cores: `make test-slow`
def test_sigterm_of_the_worker_hands_the_run_over_with_a_checkpoint(platform):
    job = pretrain(platform, 60, 2, 1, checkpoint_every=1000)
    runner = platform.runner_of(job["id"], past_step=6)
    proc = platform.workers[runner]
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(60)  # the ranks stop at the next step, checkpoint, and the worker exits
    handed = _job(platform, job)
    assert handed["checkpoint"] and "step_00000060" not in handed["checkpoint"], handed
    assert {s["state"] for s in handed["slots"]} == {"stopped"}
    done = platform.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
    assert done["status"] == "succeeded", done["error"]  # on the other worker
    assert done["attempts"] == 2 and done["resumes"] == 1
    assert _metric_steps(platform, job) == list(range(1, 61))  # each step's once
    platform.start_worker(runner)


@pytest.mark.slow  # minutes on 2 cores: `make test-slow`
def test_a_killed_worker_stops_its_run_and_the_job_resumes_elsewhere(platform):
    job = pretrain(platform, 60, 2, 1, checkpoint_every=10)
    runner = platform.runner_of(job["id"], past_step=15)
    driver = _driver(platform, runner)
    killed = time.monotonic()
    os.killpg(platform.workers[runner].pid, signal.SIGKILL)
    driver.wait(30)  # the kernel told it (SIGTERM) that its worker died
    platform.wait_for(lambda: _free_cpus() == 2, 60, "the run's ranks to end")
    print(f"\nworker killed -> every rank gone: {time.monotonic() - killed:.1f} s")
    done = platform.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["checkpoint"].endswith("step_00000060.pt")
    assert _metric_steps(platform, job) == list(range(1, 61))  # one run at a time
    platform.start_worker(runner)
