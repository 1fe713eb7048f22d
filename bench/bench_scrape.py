"""Cost of one Prometheus scrape of the API's GET /metrics, with N jobs in the database.

    MEC_DATA_DIR=/tmp/scrape python bench/bench_scrape.py [--jobs 10000] [--repeats 21]
    # PostgreSQL and Redis: also set MEC_DATABASE_URL and MEC_BROKER_URL

Adds N jobs (every status, queue and kind; the finished ones with start and end times),
then times GET /metrics in-process (routing, the database's grouped queries, the
broker's queue lengths, the text format) and prints the median and range of the repeats'
wall-clock times, and the median of this process's CPU time (which a busy host does not
inflate; the database server's is not in it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import insert

from api.main import app
from mec_platform.db import session_scope
from mec_platform.jobs import JobKind, JobStatus
from mec_platform.migrate import upgrade
from mec_platform.settings import get_settings
from mec_platform.tables import Job, utcnow


def add_jobs(n: int) -> None:
    now = utcnow()
    statuses, kinds = list(JobStatus), [JobKind.PRETRAIN, JobKind.EVALUATE, JobKind.DEPLOY]
    rows = []
    for i in range(n):
        status = statuses[i % len(statuses)]
        started = now - timedelta(seconds=600 + i % 5000) if status != "queued" else None
        rows.append({"kind": kinds[i % 3], "project": "bench", "name": f"bench-{i}",
                     "queue": "gpu" if i % 3 == 0 else "cpu", "config": {}, "status": status,
                     "enqueued_at": now - timedelta(seconds=700 + i % 5000),
                     "started_at": started,
                     "finished_at": now if status not in ("queued", "running") else None})
    with session_scope() as s:
        s.execute(insert(Job), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    settings = get_settings()
    upgrade(settings.database_url)
    add_jobs(args.jobs)
    client = TestClient(app, client=("127.0.0.1", 50000))
    assert client.get("/metrics").status_code == 200  # warm: connections, imports
    times, cpu = [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        response = client.get("/metrics")
        times.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
        assert response.status_code == 200
    backends = f"{settings.database_url.split(':')[0]} + {settings.broker_url.split(':')[0]}"
    print(f"{args.jobs} jobs added, {backends}: GET /metrics median "
          f"{statistics.median(times):.1f} ms "
          f"[{min(times):.1f}-{max(times):.1f}] over {args.repeats} scrapes (this process's "
          f"CPU: median {statistics.median(cpu):.1f} ms), "
          f"{len(response.content)} bytes")


if __name__ == "__main__":
    main()
