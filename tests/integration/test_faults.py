"""Faults survived by the real processes (API, Celery worker, PostgreSQL, Redis): the
broker losing its messages, the database going away mid-training, a diverging run, and
the API killed. The platform here has its own Redis server, so that it can be restarted,
and its worker reaches PostgreSQL through a relay that the test can cut."""

import os
import signal
import subprocess
import time

import pytest
import redis
from harness import _drop_database, _postgres_database, base_env, open_platform, unused_port
from tcp_proxy import TcpProxy
from test_jobs import pretrain


class RedisServer:
    def __init__(self, root) -> None:
        self.root, self.port = root, unused_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def restart(self) -> None:
        """Stop without saving and start again: every message it held is gone."""
        self.stop()
        self.start()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    database = _postgres_database()
    broker = RedisServer(root)
    broker.start()
    proxy = TcpProxy(("127.0.0.1", 5432))
    env = base_env(root) | {
        "MEC_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
        "MEC_BROKER_URL": broker.url, "MEC_RECONCILE_GRACE_SECONDS": "1",
        "MEC_LEASE_SECONDS": "30"}  # outlives the database outage below
    plat = open_platform(root, env, "postgres+redis")
    plat.broker, plat.proxy = broker, proxy
    plat.worker_db = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{database}"
    try:
        plat.start_api()
        yield plat
    finally:
        plat.stop()
        proxy.close()
        broker.stop()
        _drop_database(database)


def reenqueued(plat) -> list[int]:
    log = (plat.root / "w1.log").read_text()
    return [int(line.split("job ")[1].split(":")[0]) for line in log.splitlines()
            if "the broker had no message for it; re-enqueued" in line]


def test_redis_restarted_with_jobs_queued__none_lost_none_run_twice(faulty):
    lost = [pretrain(faulty, 4)["id"] for _ in range(3)]  # no worker yet: they wait
    assert _held(faulty) == sorted(lost)
    faulty.broker.restart()
    assert _held(faulty) == []
    kept = pretrain(faulty, 4)["id"]  # enqueued after the restart: the broker has it
    faulty.start_worker("w1", MEC_DATABASE_URL=faulty.worker_db)
    for job_id in [*lost, kept]:
        done = faulty.wait_status(job_id, ("succeeded", "failed"), timeout=120)
        assert done["status"] == "succeeded", done["error"]
        assert done["attempts"] == 1  # each ran once, though some got a second message
    assert sorted(reenqueued(faulty)) == sorted(lost)


def _held(plat) -> list[int]:
    from worker.reconcile import held_job_ids

    return sorted(held_job_ids(plat.broker.url))


def test_a_diverging_run_fails_with_its_reason_and_the_worker_takes_the_next_job(faulty):
    # the reference code's series without its radius, at a tiny distortion: C far outside
    diverging = pretrain(faulty, 12, base_lr=100.0, eps_sq=1e-3, order=4, taylor_radius=None,
                         warmup_epochs=0, lambda_warmup_epochs=0, log_every=1)
    following = pretrain(faulty, 4)
    failed = faulty.wait_status(diverging["id"], ("succeeded", "failed"))
    assert failed["status"] == "failed"
    assert failed["error"].startswith("training diverged: loss is not finite at step")
    done = faulty.wait_status(following["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert faulty.workers["w1"].poll() is None


def test_database_unreachable_during_training__writes_retried_job_finishes(faulty):
    job = pretrain(faulty, 60, log_every=1, checkpoint_every=20)
    faulty.wait_for(lambda: faulty.get(f"/v1/jobs/{job['id']}")["progress"]["step"] >= 10,
                    120, "training to start")
    faulty.proxy.cut()  # the worker loses the database (the API keeps its own link)
    refused = faulty.proxy.refused
    time.sleep(5)
    assert faulty.proxy.refused > refused  # the worker kept trying meanwhile
    assert faulty.get(f"/v1/jobs/{job['id']}")["status"] == "running"
    faulty.proxy.restore()
    done = faulty.wait_status(job["id"], ("succeeded", "failed"), timeout=180)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1
    loss = faulty.get(f"/v1/jobs/{job['id']}/metrics", params={"name": ["loss"]})
    assert loss["series"]["loss"]["steps"] == list(range(1, 61))  # none lost, none twice


def test_api_killed_and_restarted__no_job_state_lost(faulty):
    job = pretrain(faulty, 40, log_every=1)
    faulty.wait_for(lambda: faulty.get(f"/v1/jobs/{job['id']}")["status"] == "running",
                    60, "the job to run")
    before = faulty.get("/v1/jobs", params={"limit": 500})["data"]
    os.killpg(faulty.api.pid, signal.SIGKILL)
    faulty.api.wait()
    time.sleep(1)  # the job goes on without the API
    faulty.start_api()
    after = {j["id"]: j for j in faulty.get("/v1/jobs", params={"limit": 500})["data"]}
    assert sorted(after) == sorted(j["id"] for j in before)
    for old in before:
        new = after[old["id"]]
        assert (new["kind"], new["config"], new["created_at"]) == \
            (old["kind"], old["config"], old["created_at"])
        if old["status"] != "running":
            assert new["status"] == old["status"] and new["result"] == old["result"]
    step_before = next(j for j in before if j["id"] == job["id"])["progress"]["step"]
    assert after[job["id"]]["progress"]["step"] >= step_before
    done = faulty.wait_status(job["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1
