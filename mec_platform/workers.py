"""The workers alive now, and why a queued job may wait for one."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class QueueCapacity:
    """What the live workers of one queue can run: the most processes for one job, and
    whether one of them has a GPU."""

    processes: int = 0
    gpu: bool = False


def capacity(session: Session) -> dict[str, QueueCapacity]:
    """For each queue a live worker takes: what its workers can run."""
    queues: dict[str, QueueCapacity] = {}
    for worker in live(session):
        for queue in worker.queues:
            entry = queues.setdefault(queue, QueueCapacity())
            entry.processes = max(entry.processes, worker.processes)
            entry.gpu = entry.gpu or worker.device.startswith("cuda")
    return queues


def waiting_reason(job: Job, capacity: dict[str, QueueCapacity]) -> str | None:
    """Why queued `job` cannot start on the live workers, or None if one of them can run it."""
    if job.queue not in capacity:
        return f"no live worker takes queue '{job.queue}'"
    config = job.config or {}
    needs, most = int(config.get("processes", 1)), capacity[job.queue].processes
    if needs > most and int(config.get("nodes", 1)) == 1:  # more nodes: on Ray's
        return (f"needs {needs} processes; the largest live worker on queue '{job.queue}' "
                f"runs {most} (MEC_WORKER_PROCESSES, or its GPUs); it stays "
                "queued until a worker that can run it joins")
    if str(config.get("device", "auto")).startswith("cuda") and not capacity[job.queue].gpu \
            and int(config.get("nodes", 1)) == 1:
        return (f"asks for device {config['device']}; no live worker on queue '{job.queue}' "
                "has a GPU (they run on cpu); it stays queued until one with a GPU joins, "
                "or resubmit it with device auto or cpu")
    return None
