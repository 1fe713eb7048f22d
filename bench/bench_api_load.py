"""Load on the control plane: concurrent job submissions, then concurrent status and metrics
reads, against a real API process on PostgreSQL + Redis.

    python bench/bench_api_load.py [--submissions 200] [--reads 1000] [--json]

Starts uvicorn (one process) on a fresh PostgreSQL database and a Redis database of its
own, creates an API key, fires all submissions at once, then all reads at once (half
GET /v1/jobs/{id}, half GET /v1/jobs/{id}/metrics of a job with 5 x 10,000 metric rows),
and prints errors and latency percentiles. No worker runs: jobs stay queued.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
import redis

from serving.torchserve import unused_port

PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_DB = 8
SPEC = {"kind": "pretrain", "tags": ["load"], "config": {
    "dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "max_steps": 10}}


async def fire(requests: list[tuple[str, str, dict | None]], url: str, key: str):
    """Send every request at once; (status codes, latencies in ms)."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        async def one(method, path, body):
            start = time.perf_counter()
            try:
                r = await client.request(method, path, json=body)
                code = r.status_code
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            return code, 1e3 * (time.perf_counter() - start)

        start = time.perf_counter()
        done = await asyncio.gather(*(one(*r) for r in requests))
        wall = time.perf_counter() - start
    return [c for c, _ in done], np.array([t for _, t in done]), wall


def summary(name: str, codes, latencies, wall: float, ok: int) -> dict:
    errors = sum(c != ok for c in codes)
    return {"load": name, "requests": len(codes), "errors": errors,
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "max_ms": round(float(latencies.max()), 1),
            "throughput_rps": round(len(codes) / wall, 1)}


def add_metrics(database_url: str, job_id: int, steps: int = 10_000) -> None:
    names = ["loss", "coding_length", "spectral_norm", "lr", "lambda_inv"]
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        with cur.copy("COPY metrics (job_id, step, epoch, name, value, time) FROM STDIN") as cp:
            for step in range(1, steps + 1):
                for name in names:
                    cp.write_row((job_id, step, 0, name, 1.0 / step, "2026-01-01T00:00:00Z"))
        cur.execute("UPDATE jobs SET step = %s WHERE id = %s", (steps, job_id))


def start_api(env: dict[str, str], timeout: float = 30) -> tuple[subprocess.Popen, str]:
    """The API as its own process (uvicorn, its own process group) on a free port, and its
    URL, once /healthz answers."""
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    api = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.main:app", "--host",
                            "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                           env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return api, url
        except httpx.TransportError:
            time.sleep(0.1)
    api.kill()
    raise RuntimeError(f"the API did not answer /healthz within {timeout} s")


def run(submissions: int, reads: int) -> list[dict]:
    name = f"mec_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    redis.Redis(db=REDIS_DB).flushdb()
    root = Path(tempfile.mkdtemp(prefix="mec-load-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEC_")} | {
        "MEC_DATA_DIR": str(root),
        "MEC_DATABASE_URL": f"{PG.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}",
        "MEC_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "MEC_SUBMIT_RATE_PER_MINUTE": "1000000", "MEC_SUBMIT_BURST": "1000000"}
    api = None
    try:
        subprocess.run([sys.executable, "-m", "mec_client", "db", "upgrade"], env=env,
                       check=True,
                       capture_output=True)
        key = subprocess.run([sys.executable, "-m", "mec_client", "keys", "create",
                              "--name", "load"],
                             env=env, check=True, capture_output=True, text=True).stdout.strip()
        api, url = start_api(env)
        codes, lat, wall = asyncio.run(fire([("POST", "/v1/jobs", SPEC)] * submissions, url, key))
        results = [summary("concurrent submissions", codes, lat, wall, 201)]
        listed = httpx.get(f"{url}/v1/jobs", params={"limit": 500},
                           headers={"Authorization": f"Bearer {key}"}).json()["data"]
        ids = [j["id"] for j in listed]
        add_metrics(f"{PG}/{name}", ids[0])
        paths = [f"/v1/jobs/{ids[i % len(ids)]}" if i % 2 else f"/v1/jobs/{ids[0]}/metrics"
                 for i in range(reads)]
        codes, lat, wall = asyncio.run(fire([("GET", p, None) for p in paths], url, key))
        results.append(summary("concurrent reads (status + metrics)", codes, lat, wall, 200))
        results.append({"load": "jobs in the database", "requests": len(ids),
                        "errors": int(len(ids) != submissions)})
        return results
    finally:
        if api is not None:
            os.killpg(api.pid, signal.SIGTERM)
            try:
                api.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(api.pid, signal.SIGKILL)
                api.wait()
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        redis.Redis(db=REDIS_DB).flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    results = run(args.submissions, args.reads)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{os.cpu_count()} CPUs, API: 1 uvicorn process, PostgreSQL + Redis on this host")
    print(f"{'load':<38} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'req/s':>8}")
    for r in results:
        print(f"{r['load']:<38} {r['requests']:>8} {r['errors']:>6} {r.get('p50_ms', ''):>8} "
              f"{r.get('p99_ms', ''):>8} {r.get('max_ms', ''):>8} {r.get('throughput_rps', ''):>8}")


if __name__ == "__main__":
    main()
