"""Soak (slow; about 20 minutes, MEC_SOAK_SECONDS to change): continuous submissions, reads,
cancels, redeploys (every 90 s a new version replaces the serving one) and embeddings on
PostgreSQL + Redis + TorchServe. Every 30 s it samples
the memory (RSS of each process tree) of the API, the worker and TorchServe, their open
file descriptors, the database's connections and the latency of reads; at the end memory,
descriptors and connections stay within the bounds below and reads do not slow down.
MEC_SOAK_REPORT=path writes the samples as JSON (docs/reliability.md quotes them)."""

from __future__ import annotations

import json
import os
import statistics
import time

import httpx
import psutil
import psycopg
import pytest
from harness import PG_ADMIN, full_platform
from test_deploy import png
from test_jobs import TINY

from serving.client import Keys

SECONDS = float(os.environ.get("MEC_SOAK_SECONDS", "1200"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(SECONDS + 600)]
SAMPLE_EVERY = 30.0
# growth allowed from the first samples (after warm-up) to the last ones
GROWTH_MB = {"api": 40, "worker": 150, "torchserve": 150}
FDS_GROWTH = 16
MAX_DB_CONNECTIONS = 60


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _rss_mb(pid: int) -> float:
    return sum(p.memory_info().rss for p in _tree(pid)) / 2**20


def _fds(pid: int) -> int:
    return sum(p.num_fds() for p in _tree(pid))


def _db_connections(database: str) -> int:
    with psycopg.connect(PG_ADMIN) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                            (database,)).fetchone()[0]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def test_soak__memory_descriptors_connections_and_latency_stay_flat(tmp_path):
    with full_platform(tmp_path, "postgres+redis", MEC_SUBMIT_RATE_PER_MINUTE="100000",
                       MEC_SUBMIT_BURST="100000") as plat:
        first = plat.post("/v1/jobs", {"kind": "pretrain", "queue": "gpu",
                                       "config": TINY | {"max_steps": 4}})
        assert plat.wait_status(first["id"], ("succeeded", "failed"))["status"] == "succeeded"
        model = plat.get("/v1/models")["data"][0]
        procs = {"api": plat.api.pid, "worker": plat.workers["w1"].pid,
                 "torchserve": plat.torchserve.process.pid}
        samples, reads, deployed = [], [], None
        counts = {"submitted": 0, "cancelled": 0, "deploys": 0, "embeds": 0}
        start = last_sample = last_deploy = time.monotonic()
        while time.monotonic() - start < SECONDS:
            job = plat.post("/v1/jobs", {"kind": "pretrain", "queue": "gpu", "tags": ["soak"],
                                         "config": TINY | {"max_steps": 2}})
            counts["submitted"] += 1
            if counts["submitted"] % 3 == 0:
                plat.client.post(f"/v1/jobs/{job['id']}/cancel")
                counts["cancelled"] += 1
            for path in ("/v1/jobs?tag=soak", f"/v1/jobs/{job['id']}",
                         f"/v1/jobs/{first['id']}/metrics", "/v1/models"):
                began = time.perf_counter()
                plat.get(path)
                reads.append((time.monotonic(), time.perf_counter() - began))
            if time.monotonic() - last_deploy > 90:  # a new version replaces the serving one
                plat.post(f"/v1/models/{model['id']}/deploy", None, expect=202)
                counts["deploys"] += 1
                last_deploy = time.monotonic()
            serving = plat.get(f"/v1/models/{model['id']}")["deployment"]
            deployed = serving if serving and serving["status"] == "serving" else None
            if deployed:
                auth = {"Authorization": f"Bearer {Keys.read(plat.torchserve.home).inference}"}
                r = httpx.post(deployed["urls"]["embed"], content=png(counts["embeds"] % 8),
                               headers=auth, timeout=30)
                assert r.status_code == 200, r.text  # a redeploy drops no request
                counts["embeds"] += r.status_code == 200
            if time.monotonic() - last_sample >= SAMPLE_EVERY:
                last_sample = time.monotonic()
                window = [s for t, s in reads if t > last_sample - SAMPLE_EVERY]
                samples.append({
                    "t": round(last_sample - start),
                    **{f"{name}_mb": round(_rss_mb(pid), 1) for name, pid in procs.items()},
                    **{f"{name}_fds": _fds(pid) for name, pid in procs.items()},
                    "db_connections": _db_connections(plat.database),
                    "read_p50_ms": round(1000 * _median(window), 1),
                    "jobs": plat.get("/v1/jobs", params={"limit": 1})["count"]})
                print(samples[-1], flush=True)
            time.sleep(3.0)
        print(counts)
        if os.environ.get("MEC_SOAK_REPORT"):
            with open(os.environ["MEC_SOAK_REPORT"], "w") as f:
                json.dump({"seconds": SECONDS, "counts": counts, "samples": samples}, f,
                          indent=1)

    assert len(samples) >= 8 and counts["deploys"] >= 2 and counts["embeds"] > 0
    # after two minutes of warm-up (the first deployment included); medians, so that a
    # sample taken while two versions are loaded (a redeploy) does not decide
    early, late = samples[4:7], samples[-3:]
    for name, bound in GROWTH_MB.items():
        grown = _median([s[f"{name}_mb"] for s in late]) - \
            _median([s[f"{name}_mb"] for s in early])
        assert grown <= bound, f"{name} grew {grown:.0f} MB (bound {bound})"
        fds = _median([s[f"{name}_fds"] for s in late]) - \
            _median([s[f"{name}_fds"] for s in early])
        assert fds <= FDS_GROWTH, f"{name} holds {fds} more file descriptors"
    assert max(s["db_connections"] for s in samples) <= MAX_DB_CONNECTIONS
    p50_early = _median([s["read_p50_ms"] for s in early])
    p50_late = _median([s["read_p50_ms"] for s in late])
    assert p50_late <= 2 * p50_early + 25, (p50_early, p50_late)
