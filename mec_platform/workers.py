"""The workers alive now, and why a queued job may wait for one."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from mec_platform.settings import get_settings
from mec_platform.tables import Job, Worker, utcnow


def live(session: Session) -> list[Worker]:
    """Workers whose heartbeat is recent (within three beats)."""
    cutoff = utcnow() - timedelta(seconds=3 * get_settings().heartbeat_seconds)
    return list(session.scalars(select(Worker).where(Worker.seen_at >= cutoff)
                                .order_by(Worker.name)))


def capacity(session: Session) -> dict[str, int]:
    """For each queue a live worker takes: the most processes one of them can run."""
    most: dict[str, int] = {}
    for worker in live(session):
        for queue in worker.queues:
            most[queue] = max(most.get(queue, 0), worker.processes)
    return most


def waiting_reason(job: Job, capacity: dict[str, int]) -> str | None:
    """Why queued `job` cannot start on the live workers, or None if one of them can run it."""
    if job.queue not in capacity:
        return f"no live worker takes queue '{job.queue}'"
    needs = int((job.config or {}).get("processes", 1))
    if needs > capacity[job.queue]:
        return (f"needs {needs} processes; the largest live worker on queue '{job.queue}' "
                f"runs {capacity[job.queue]} (MEC_WORKER_PROCESSES, or its GPUs); it stays "
                "queued until a worker that can run it joins")
    return None
