"""Job state in the database: the one place that knows the lifecycle
queued -> running -> succeeded | failed | cancelled."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.models import Job, utcnow
from api.schemas import JobPublic, Progress

FINISHED = ("succeeded", "failed", "cancelled")


def public(job: Job, now: datetime | None = None) -> JobPublic:
    """The API view of a job, with progress and ETA derived from its counters."""
    total = job.total_steps
    percent = 100.0 if job.status == "succeeded" else (
        100.0 * job.step / total if total else 0.0)
    eta = None
    if job.status == "running" and total and job.step and job.started_at:
        elapsed = ((now or utcnow()) - job.started_at).total_seconds()
        eta = elapsed / job.step * (total - job.step)
    return JobPublic(
        id=job.id, kind=job.kind, name=job.name, tags=job.tags, priority=job.priority,
        queue=job.queue, status=job.status, config=job.config,
        progress=Progress(step=job.step, total_steps=total, epoch=job.epoch,
                          steps_per_epoch=job.steps_per_epoch, percent=round(percent, 2)),
        eta_seconds=eta, last_metrics=job.last_metrics, result=job.result, error=job.error,
        cancel_requested=job.cancel_requested, attempts=job.attempts,
        resumes=max(job.attempts - 1, 0), checkpoint=job.checkpoint,
        worker_host=job.worker_host, device=job.device, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at)


def cancel(session: Session, job_id: int) -> str | None:
    """Cancel atomically: a queued job becomes cancelled, a running one gets the flag its
    training loop polls. Returns the status it had, or None if it had already finished."""
    now = utcnow()
    done = session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
        status="cancelled", cancel_requested=True, finished_at=now))
    if done.rowcount:
        session.commit()
        return "queued"
    done = session.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                           .values(cancel_requested=True))
    session.commit()
    return "running" if done.rowcount else None


def claim(session: Session, job_id: int, owner: str, host: str, device: str,
          lease_seconds: float) -> bool:
    """Take a queued job for `owner` with a lease; False if someone else has it or it is
    no longer queued. A second delivery of the same message therefore does nothing."""
    now = utcnow()
    done = session.execute(
        update(Job).where(Job.id == job_id, Job.status == "queued",
                          Job.cancel_requested.is_(False))
        .values(status="running", lease_owner=owner, worker_host=host, device=device,
                lease_expires=now + timedelta(seconds=lease_seconds),
                attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, now)))
    session.commit()
    return bool(done.rowcount)


def renew(session: Session, job_id: int, owner: str, lease_seconds: float) -> bool:
    """Extend the lease; False if the job is no longer ours (reaped, or finished)."""
    done = session.execute(
        update(Job).where(Job.id == job_id, Job.status == "running", Job.lease_owner == owner)
        .values(lease_expires=utcnow() + timedelta(seconds=lease_seconds)))
    session.commit()
    return bool(done.rowcount)


def finish(session: Session, job_id: int, owner: str, status: str, error: str | None = None,
           result: dict | None = None) -> bool:
    """Move our running job to a final status (or back to queued, for a clean hand-over)."""
    values = dict(status=status, error=error, lease_owner=None, lease_expires=None)
    if result is not None:
        values["result"] = result
    if status in FINISHED:
        values["finished_at"] = utcnow()
    done = session.execute(update(Job).where(Job.id == job_id, Job.status == "running",
                                             Job.lease_owner == owner).values(**values))
    session.commit()
    return bool(done.rowcount)


def reap(session: Session, max_attempts: int) -> list[int]:
    """Running jobs whose lease expired: back to queued (to resume from their checkpoint),
    or failed once they have used `max_attempts` runs. Returns the re-queued ids."""
    now = utcnow()
    expired = session.scalars(select(Job).where(Job.status == "running",
                                                Job.lease_expires < now)).all()
    requeued = []
    for job in expired:
        cause = f"worker {job.lease_owner} on {job.worker_host} stopped renewing its lease"
        give_up = job.attempts >= max_attempts
        values = dict(lease_owner=None, lease_expires=None, error=cause)
        if give_up:
            values |= dict(status="failed", finished_at=now,
                           error=f"{cause}; gave up after {job.attempts} attempts")
        elif job.cancel_requested:
            values |= dict(status="cancelled", finished_at=now)
        else:
            values |= dict(status="queued", enqueued_at=now)
        done = session.execute(update(Job).where(Job.id == job.id, Job.status == "running",
                                                 Job.lease_expires < now).values(**values))
        if done.rowcount and values["status"] == "queued":
            requeued.append(job.id)
    session.commit()
    return requeued
