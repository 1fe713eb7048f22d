"""Training callbacks that write progress and metrics to the database."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from mec_core.train import Callbacks, StepMetrics
from mec_platform.db import retrying, session_scope
from mec_platform.jobs import JobStatus
from mec_platform.tables import Job, Metric, utcnow
from worker.job_store import CheckpointUploads


class DatabaseCallbacks(Callbacks):
    """Metrics in batches (one transaction per flush of the trainer), progress, each
    checkpoint stored (the job names it once it is whole in the store; `close()` waits for
    the last), and the cancel flag polled at most every `poll_seconds` (also from
    inside a step: a cancel interrupts it)."""

    def __init__(self, job_id: int, owner: str, poll_seconds: float,
                 shutting_down: threading.Event | None = None) -> None:
        self.job_id, self.owner, self.poll_seconds = job_id, owner, poll_seconds
        self.shutting_down = shutting_down or threading.Event()
        self.last_poll = 0.0
        self.stop = False
        self.cancelled = False
        self.latest: dict[str, float] = {}  # each metric's newest value (the monitor's too)
        self.uploads = CheckpointUploads(job_id, self._stored)

    def on_start(self, start_step: int, total_steps: int, steps_per_epoch: int) -> None:
        def write():
            with session_scope() as s:
                # a resumed run repeats the steps after its checkpoint: drop their metrics
                s.execute(delete(Metric).where(Metric.job_id == self.job_id,
                                               Metric.step > start_step))
                s.execute(update(Job).where(Job.id == self.job_id).values(
                    step=start_step, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                    epoch=start_step // steps_per_epoch))
        retrying(write)

    def on_metrics(self, records: list[StepMetrics]) -> None:
        now = utcnow()
        rows = [{"job_id": self.job_id, "step": r.step, "epoch": r.epoch, "name": k,
                 "value": v, "time": now} for r in records for k, v in r.values.items()]
        last = records[-1]
        for r in records:  # the monitor's values come every N steps: keep them until the next
            self.latest.update(r.values)
        latest = dict(self.latest)

        def write():
            with session_scope() as s:
                # idempotent: a commit whose acknowledgement a database outage lost is
                # retried, and must not fail on the rows it already wrote
                dialect = s.get_bind().dialect.name
                stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Metric)
                s.execute(stmt.on_conflict_do_nothing(
                    index_elements=["job_id", "name", "step"]), rows)
                s.execute(update(Job).where(Job.id == self.job_id).values(
                    step=last.step, epoch=last.epoch, last_metrics=latest))
        retrying(write)

    def on_checkpoint(self, path: Path, step: int) -> None:
        self.uploads.add(path)

    def _stored(self, ref: str) -> None:
        def write():
            with session_scope() as s:
                s.execute(update(Job).where(Job.id == self.job_id).values(checkpoint=ref))
        retrying(write)

    def close(self) -> None:
        """Wait until the newest checkpoint is stored."""
        self.uploads.close()

    def should_stop(self, step: int) -> bool:
        if self.shutting_down.is_set():
            return True
        now = time.monotonic()
        if not self.stop and now - self.last_poll >= self.poll_seconds:
            self.last_poll = now

            def read():
                with session_scope() as s:
                    return s.execute(select(Job.cancel_requested, Job.lease_owner, Job.status)
                                     .where(Job.id == self.job_id)).one()
            cancel, owner, status = retrying(read)
            self.cancelled = bool(cancel)
            # stop also when the job is no longer ours (reaped after a stall)
            self.stop = self.cancelled or owner != self.owner or status != JobStatus.RUNNING
        return self.stop

    def interrupt_requested(self) -> bool:
        """A cancel abandons the step under way (read with the same rate limit); a
        hand-over or a lost lease still stops at the step's end, with a checkpoint."""
        self.should_stop(0)
        return self.cancelled
