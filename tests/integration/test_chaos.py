"""Chaos: 30 small jobs submitted while a seeded driver, at random moments, kills -9 and
restarts the workers, the API and Redis, and cuts PostgreSQL for a few seconds (the API and
the workers reach it through a relay). At the end every job ended once, no metric step was
written twice or lost, no two leases of a job overlapped, no process outlived the platform
and no checkpoint is half-written.

The fault schedule is printed first; MEC_CHAOS_SEED=N replays it."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import httpx
import psutil
import pytest
from harness import _drop_database, _postgres_database, base_env, open_platform
from sqlalchemy import create_engine, select
from tcp_proxy import TcpProxy
from test_faults import RedisServer
from test_jobs import TINY

from mec_core import checkpoint
from mec_platform.tables import Lease

JOBS = 30
STEPS = 60
MAX_ATTEMPTS = 3
FAULTS = ("kill worker", "kill api", "kill redis", "cut postgres")


def schedule(seed: int) -> list[tuple[float, str, str]]:
    """(seconds from the start, fault, target): two of each fault in the first 60 s."""
    rng = random.Random(seed)
    faults = [(round(rng.uniform(3, 60), 1), fault,
               rng.choice(["w1", "w2"]) if fault == "kill worker" else "")
              for fault in FAULTS for _ in range(2)]
    return sorted(faults)


@pytest.fixture
def chaotic(tmp_path):
    database = _postgres_database()
    broker = RedisServer(tmp_path)
    broker.start()
    relay = TcpProxy(("127.0.0.1", 5432))
    env = base_env(tmp_path) | {
        "MEC_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{relay.port}/{database}",
        "MEC_BROKER_URL": broker.url, "MEC_RECONCILE_GRACE_SECONDS": "2",
        "MEC_MAX_ATTEMPTS": str(MAX_ATTEMPTS), "MEC_SUBMIT_BURST": "100"}
    plat = open_platform(tmp_path, env, "postgres+redis")
    plat.broker, plat.relay = broker, relay
    plat.direct_db = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    try:
        plat.start_api()
        plat.start_worker("w1")
        plat.start_worker("w2")
        yield plat
    finally:
        plat.stop()
        relay.close()
        broker.stop()
        _drop_database(database)


def _kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _restart_worker(plat, name: str) -> None:
    plat.wait_for(lambda: plat.relay.up.is_set(), 30, "the database to come back")
    plat.start_worker(name)


def inject(plat, fault: str, target: str) -> None:
    if fault == "kill worker":
        _kill(plat.workers[target])
        time.sleep(1)
        _restart_worker(plat, target)
    elif fault == "kill api":
        _kill(plat.api)
        time.sleep(1)
        plat.start_api()
    elif fault == "kill redis":
        plat.broker.proc.kill()  # -9: every message it held is gone
        plat.broker.proc.wait()
        time.sleep(1)
        plat.broker.start()
    else:
        plat.relay.cut()
        time.sleep(3)
        plat.relay.restore()


def submit_all(plat, ids: list[int]) -> None:
    """Submit the jobs one by one, each retried with its Idempotency-Key until accepted
    (the API may be down, or without its database, at that moment)."""
    for n in range(JOBS):
        spec = {"kind": "pretrain", "name": f"chaos-{n}", "tags": ["chaos"], "queue": "gpu",
                "config": TINY | {"max_steps": STEPS, "epochs": STEPS // 8 + 1, "log_every": 1,
                                  "checkpoint_every": 4}}
        while True:
            try:
                r = plat.client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": f"c{n}"})
                if r.status_code in (200, 201):
                    ids.append(r.json()["id"])
                    break
                assert r.status_code >= 500, r.text  # never a client error
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        time.sleep(1.5)


def _finished(plat, ids: list[int]) -> bool:
    try:
        jobs = plat.client.get("/v1/jobs", params={"tag": "chaos", "limit": 500}).json()["data"]
    except (httpx.TransportError, KeyError):
        return False
    return len(jobs) == JOBS and all(j["status"] in ("succeeded", "failed") for j in jobs)


@pytest.mark.slow  # about 4 minutes: make test-slow
def test_chaos__every_job_ends_once_nothing_twice_nothing_left(chaotic):
    plat = chaotic
    seed = int(os.environ.get("MEC_CHAOS_SEED", "20261130"))
    faults = schedule(seed)
    print(f"chaos seed {seed} (MEC_CHAOS_SEED={seed} replays it):")
    for at, fault, target in faults:
        print(f"  t+{at:5.1f}s  {fault} {target}")
    ids: list[int] = []
    submitter = threading.Thread(target=submit_all, args=(plat, ids))
    start = time.monotonic()
    submitter.start()
    for at, fault, target in faults:
        time.sleep(max(0.0, start + at - time.monotonic()))
        inject(plat, fault, target)
    submitter.join(120)
    assert len(ids) == JOBS
    plat.wait_for(lambda: _finished(plat, ids), 300, "every chaos job to end")

    jobs = plat.get("/v1/jobs", params={"tag": "chaos", "limit": 500})["data"]
    assert sorted(j["id"] for j in jobs) == sorted(ids)  # each submission made one job
    engine = create_engine(plat.direct_db)
    with engine.connect() as db:
        leases = db.execute(select(Lease).order_by(Lease.job_id, Lease.claimed_at)).all()
    engine.dispose()
    for job in jobs:
        if job["status"] == "failed":  # only by running out of attempts
            assert job["attempts"] == MAX_ATTEMPTS and job["error"], job
        steps = plat.get(f"/v1/jobs/{job['id']}/metrics",
                         params={"name": ["loss"], "max_points": 1000})["series"]["loss"]["steps"]
        if job["status"] == "succeeded":
            assert steps == list(range(1, STEPS + 1)), (job["id"], steps)
        assert steps == sorted(set(steps))  # none twice
        runs = [lease for lease in leases if lease.job_id == job["id"]]
        assert len(runs) == job["attempts"], (job["id"], runs)
        for a, b in zip(runs, runs[1:]):  # one worker at a time
            assert a.ended_at is not None and a.ended_at <= b.claimed_at, (job["id"], a, b)
        assert runs[-1].ended_at is not None
    print(f"attempts: {sorted(j['attempts'] for j in jobs)}; "
          f"statuses: {sorted({j['status'] for j in jobs})}")

    artifacts = plat.root / "data" / "artifacts" / "store" / "jobs"
    for folder in artifacts.glob("*/checkpoints"):
        for path in folder.glob("step_*.pt"):
            checkpoint.load(path)  # complete, of our format
    data_dir = plat.env["MEC_DATA_DIR"]
    plat.stop()
    orphans = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("MEC_DATA_DIR") == data_dir:
                orphans.append((proc.pid, proc.info["cmdline"]))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    assert not orphans
