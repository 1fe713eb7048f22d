"""Jobs in the database: the one place that knows the lifecycle
queued -> running -> succeeded | failed | cancelled, and how a job reaches a worker
(a committed row first, then a message on its queue)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mec_client.models import FINISHED, JobKind, JobStatus
from mec_platform.keys import DEFAULT_PROJECT
from mec_platform.queue import Queue, enqueue
from mec_platform.tables import Job, Lease, utcnow


def submit(session: Session, kind: JobKind, config: dict, queue: Queue, name: str = "",
           tags: list[str] | None = None, priority: int = 0,
           idempotency_key: str | None = None, project: str = DEFAULT_PROJECT,
           parent_id: int | None = None) -> Job:
    """Add a queued job of `project` (a sweep's trial: with its `parent_id`), commit, then
    ring its queue: a worker that takes the message always finds the row. Raises
    IntegrityError (rolled back) for a reused idempotency key."""
    job = Job(kind=kind, project=project, name=name or kind, tags=tags or [],
              priority=priority, queue=queue, status=JobStatus.QUEUED, config=config,
              idempotency_key=idempotency_key, enqueued_at=utcnow(), parent_id=parent_id)
    session.add(job)
    try:
        session.commit()
    except Exception:
        session.rollback()
        raise
    enqueue(job.id, job.kind, job.queue, job.priority)
    return job


def enqueue_again(session: Session, job_ids: Iterable[int]) -> None:
    """A fresh message for each of these (queued) jobs, on its own queue and priority."""
    ids = list(job_ids)
    if not ids:
        return
    rows = session.execute(select(Job.id, Job.kind, Job.queue, Job.priority)
                           .where(Job.id.in_(ids))).all()
    for job_id, kind, queue, priority in rows:
        enqueue(job_id, kind, queue, priority)


def cancel(session: Session, job_id: int, reason: str | None = None) -> JobStatus | None:
    """Cancel atomically: a queued job becomes cancelled, a running one gets the flag its
    training loop polls; `reason` becomes its error. Returns the status it had, or None if
    it had already finished."""
    now = utcnow()
    why = {"error": reason} if reason else {}
    done = session.execute(update(Job).where(
        Job.id == job_id, Job.status == JobStatus.QUEUED).values(
        status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now, **why))
    if done.rowcount:
        session.commit()
        return JobStatus.QUEUED
    done = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                           .values(cancel_requested=True, **why))
    session.commit()
    return JobStatus.RUNNING if done.rowcount else None


def claim(session: Session, job_id: int, owner: str, host: str, device: str,
          lease_seconds: float) -> bool:
    """Take a queued job for `owner` with a lease (recorded in the lease history); False if
    someone else has it or it is no longer queued. A second delivery of the same message
    therefore does nothing."""
    now = utcnow()
    expires = now + timedelta(seconds=lease_seconds)
    done = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED,
                          Job.cancel_requested.is_(False))
        .values(status=JobStatus.RUNNING, lease_owner=owner, worker_host=host, device=device,
                lease_expires=expires, attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now)))
    if done.rowcount:
        session.add(Lease(job_id=job_id, owner=owner, claimed_at=now, expires=expires))
    session.commit()
    return bool(done.rowcount)


def take_for_tick(session: Session, job_id: int, owner: str, lease_seconds: float) -> bool:
    """Take a running sweep that nobody is advancing, for one tick: a lease that the tick
    lets go of (`let_go`), or that the reaper finds expired if the tick died."""
    done = session.execute(update(Job).where(
        Job.id == job_id, Job.kind == JobKind.SWEEP, Job.status == JobStatus.RUNNING,
        Job.lease_expires.is_(None)).values(
        lease_owner=owner, lease_expires=utcnow() + timedelta(seconds=lease_seconds)))
    session.commit()
    return bool(done.rowcount)


def let_go(session: Session, job_id: int, owner: str) -> None:
    """End a tick's lease: the sweep runs on, waiting for its trials, held by nobody."""
    session.execute(update(Job).where(Job.id == job_id, Job.lease_owner == owner)
                    .values(lease_owner=None, lease_expires=None))
    _set_open_lease(session, job_id, owner, ended_at=utcnow())
    session.commit()


def _set_open_lease(session: Session, job_id: int, owner: str, **values) -> None:
    """Update the history row of `owner`'s current lease of the job (renewed or ended)."""
    session.execute(update(Lease).where(Lease.job_id == job_id, Lease.owner == owner,
                                        Lease.ended_at.is_(None)).values(**values))


def renew(session: Session, job_id: int, owner: str, lease_seconds: float) -> bool:
    """Extend the lease; False if the job is no longer ours (reaped, or finished)."""
    expires = utcnow() + timedelta(seconds=lease_seconds)
    done = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING,
                          Job.lease_owner == owner).values(lease_expires=expires))
    if done.rowcount:
        _set_open_lease(session, job_id, owner, expires=expires)
    session.commit()
    return bool(done.rowcount)


def finish(session: Session, job_id: int, owner: str, status: JobStatus, error: str | None = None,
           result: dict | None = None) -> bool:
    """Move our running job to a final status (or back to queued, for a clean hand-over)."""
    # a cancelled job keeps the reason its canceller gave (a sweep's pruning)
    kept = Job.error if status == JobStatus.CANCELLED and error is None else error
    values = dict(status=status, error=kept, lease_owner=None, lease_expires=None)
    if result is not None:
        values["result"] = result
    if status in FINISHED:
        values["finished_at"] = utcnow()
    done = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING,
                                             Job.lease_owner == owner).values(**values))
    if done.rowcount:
        _set_open_lease(session, job_id, owner, ended_at=utcnow())
    session.commit()
    return bool(done.rowcount)


def reap(session: Session, max_attempts: int) -> list[int]:
    """Running jobs whose lease expired: back to queued (to resume from their checkpoint),
    or failed once they have used `max_attempts` runs. Returns the re-queued ids."""
    now = utcnow()
    expired = session.scalars(select(Job).where(Job.status == JobStatus.RUNNING,
                                                Job.lease_expires < now)).all()
    requeued = []
    for job in expired:
        owner, ran_out = job.lease_owner, job.lease_expires  # before the update clears them
        cause = f"worker {owner} on {job.worker_host} stopped renewing its lease"
        give_up = job.attempts >= max_attempts
        values = dict(lease_owner=None, lease_expires=None, error=cause)
        if give_up:
            values |= dict(status=JobStatus.FAILED, finished_at=now,
                           error=f"{cause}; gave up after {job.attempts} attempts")
        elif job.cancel_requested:
            values |= dict(status=JobStatus.CANCELLED, finished_at=now)
        else:
            values |= dict(status=JobStatus.QUEUED, enqueued_at=now)
        done = session.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING,
                                                 Job.lease_expires < now).values(**values))
        if done.rowcount:
            _set_open_lease(session, job.id, owner, ended_at=ran_out)
        if done.rowcount and values["status"] == JobStatus.QUEUED:
            requeued.append(job.id)
    session.commit()
    return requeued
