"""Jobs in the database: the one place that knows the lifecycle
queued -> running -> succeeded | failed | cancelled, and how a job reaches a worker
(a committed row first, then a message on its queue); and the jobs service that the
routes and the tasks call: what a submission is checked for, a submission under an
Idempotency-Key, a cancel that takes a sweep's trials with it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mec_client.enums import FINISHED, JobKind, JobStatus
from mec_core.config import TrainConfig
from mec_core.datafiles import DEFAULT_DIRS, missing
from mec_platform import datasets, keys, paths, storage
from mec_platform.errors import Conflict, Invalid, NotFound
from mec_platform.keys import DEFAULT_PROJECT
from mec_platform.queue import Queue, enqueue
from mec_platform.settings import get_settings
from mec_platform.specs import EvaluateSpec, SweepSpec
from mec_platform.tables import ApiKey, Job, Lease, utcnow

log = logging.getLogger(__name__)


def submit(session: Session, kind: JobKind, config: dict, queue: Queue, name: str = "",
           tags: list[str] | None = None, priority: int = 0,
           idempotency_key: str | None = None, project: str = DEFAULT_PROJECT,
           parent_id: int | None = None, trial: int | None = None) -> Job:
    """Add a queued job of `project` (a sweep's child: with its `parent_id` and `trial`
    number), commit, then ring its queue: a worker that takes the message always finds the
    row. Raises IntegrityError (rolled back) for a reused idempotency key or trial."""
    job = Job(kind=kind, project=project, name=name or kind, tags=tags or [],
              priority=priority, queue=queue, status=JobStatus.QUEUED, config=config,
              idempotency_key=idempotency_key, enqueued_at=utcnow(), parent_id=parent_id,
              trial=trial)
    session.add(job)
    try:
        session.commit()
    except Exception:
        session.rollback()
        raise
    enqueue(job.id, job.kind, job.queue, job.priority)
    return job


def submit_once(session: Session, key: ApiKey, idempotency_key: str | None, kind: JobKind,
                config: BaseModel, queue: Queue, name: str, tags: list[str],
                priority: int) -> tuple[Job, bool]:
    """submit() to the key's project, at most once per Idempotency-Key (keys are per
    project: another project's use of the same key is not seen). Returns the job and
    whether it is new; the key used before for another submission is a Conflict (a
    client's bug, as Stripe answers it)."""
    stored = f"{key.project}:{idempotency_key}" if idempotency_key else None
    fields = config.model_dump(mode="json")

    def earlier() -> tuple[Job, bool] | None:
        job = session.scalar(select(Job).where(Job.idempotency_key == stored))
        if job is not None and (job.kind, job.name, job.config) != (kind, name or kind, fields):
            raise Conflict(f"Idempotency-Key: already used for job {job.id}, submitted with "
                           "another body; use a new key")
        return None if job is None else (job, False)

    if stored and (found := earlier()):
        return found
    check(session, key, config)
    try:
        return submit(session, kind, fields, queue, name, tags, priority, stored,
                      key.project), True
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won
        return earlier()


def check(session: Session, key: ApiKey, config: BaseModel) -> None:
    """What a submission can know before queueing: every path under the data roots (one
    rule, mec_platform.paths), a dataset's files where the workers look (in the roots this
    API sees too), an evaluation's job (NotFound outside the key's projects, Conflict when
    of another kind)."""
    roots = get_settings().allowed_data_roots
    try:
        if isinstance(config, SweepSpec):
            paths.check_sweep(config, roots)
        else:
            paths.check(config.data_dir, "config.data_dir", roots)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if isinstance(config, SweepSpec):
        check_dataset(config.base.get("dataset", "fashion-mnist"), config.base.get("data_dir"),
                      fields=("config.base.dataset", "config.base.data_dir"))
    if isinstance(config, TrainConfig):
        check_dataset(config.dataset, config.data_dir)
        if config.nodes > 1 and not get_settings().ray_address:
            raise Invalid(f"config.nodes: a job of {config.nodes} nodes runs on a Ray cluster, "
                          "and this platform has none: set MEC_RAY_ADDRESS (`mec up --ray-nodes N` "
                          "starts a local one), or use nodes 1")
    if isinstance(config, EvaluateSpec):
        target = session.get(Job, config.job_id)
        if target is None or not keys.sees(key, target.project):
            raise NotFound(f"config.job_id: job {config.job_id} not found")
        if target.kind not in (JobKind.PRETRAIN, JobKind.IMPORT):
            raise Conflict(f"config.job_id: job {config.job_id} is a {target.kind} job, not "
                           "a pretraining or import job")
        if config.dataset is not None:
            check_dataset(config.dataset, config.data_dir, splits=("train", "test"))
        else:
            _check_trained_on(session, target)


def _check_trained_on(session: Session, target: Job) -> None:
    """NotFound naming config.job_id when the dataset version the job trained on, which an
    evaluation without its own dataset reads, has been deleted since."""
    uri = (target.config or {}).get("data_dir") or ""
    if uri.startswith(datasets.SCHEME):
        try:
            datasets.resolve(session, target.project, uri, "data_dir")
        except LookupError as exc:
            raise NotFound(f"config.job_id: job {target.id} trained on {uri}, which is gone "
                           f"({str(exc).removeprefix('data_dir: ')}): evaluate it on "
                           "another dataset (config.dataset, config.data_dir)") from None


def check_dataset(dataset: str, data_dir: str | None, splits: tuple[str, ...] = ("train",),
                  fields: tuple[str, str] = ("config.dataset", "config.data_dir")) -> None:
    """Invalid, naming `fields` (the dataset's and its folder's), when the dataset's files
    are not where a worker will look, if this process sees that data root (one host, or a
    shared mount); where it does not, the worker that claims the job checks before it
    starts and fails it at once with the same words."""
    where = data_dir or DEFAULT_DIRS.get(dataset)
    root = None if where is None else paths.root_of(where, get_settings().allowed_data_roots)
    if where is not None and (root is None or not root.is_dir()):
        return
    problem = missing(dataset, data_dir, splits)
    if problem:
        raise Invalid(f"{fields[1] if data_dir else fields[0]}: {problem}")


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


def cancel_job(session: Session, job: Job) -> None:
    """Cancel the job (see cancel) and, a sweep, its unfinished trials and evaluations with
    it; Conflict if it had already finished."""
    if cancel(session, job.id) is None:
        session.refresh(job)
        raise Conflict(f"job {job.id} is already {job.status}")
    if job.kind == JobKind.SWEEP:
        cancel_children(session, job.id)
    session.refresh(job)
    drop_staged(job)  # a queued one never runs: what it was given goes now


# the store file a job of these kinds is given (an import's staged items, an uploaded
# checkpoint): nothing else reads it, so it goes once the job has ended, except the upload
# of a model import that succeeded (it is the model's checkpoint)
STAGED = {JobKind.GALLERY: "items", JobKind.IMPORT: "checkpoint"}


def drop_staged(job: Job) -> None:
    """Remove the store file the job was given, if it has ended without keeping it."""
    field = STAGED.get(job.kind)
    kept = job.kind == JobKind.IMPORT and job.status == JobStatus.SUCCEEDED
    if field and job.status in FINISHED and not kept and (job.config or {}).get(field):
        try:
            storage.remove(job.config[field])
        except Exception as exc:  # the job has ended all the same; the file stays
            log.warning("job %s: its %s %s not removed: %s", job.id, field, job.config[field],
                        exc)


def cancel_children(session: Session, sweep_id: int) -> None:
    """Cancel a sweep's unfinished children, each saying why (the sweep was cancelled)."""
    children = session.scalars(select(Job.id).where(
        Job.parent_id == sweep_id, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING))))
    for child in children.all():
        cancel(session, child, reason=f"sweep {sweep_id} was cancelled")


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
        elif job.cancel_requested:  # ended as asked, with its canceller's reason if any
            values |= dict(status=JobStatus.CANCELLED, finished_at=now,
                           error=job.error or f"cancelled; {cause} before it stopped")
        else:
            values |= dict(status=JobStatus.QUEUED, enqueued_at=now)
        done = session.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING,
                                                 Job.lease_expires < now).values(**values))
        if done.rowcount:
            _set_open_lease(session, job.id, owner, ended_at=ran_out)
        if done.rowcount and values["status"] == JobStatus.QUEUED:
            requeued.append(job.id)
    session.commit()
    for job in expired:  # those that ended here lose what they were given
        if job.kind in STAGED:
            session.refresh(job)
            drop_staged(job)
    return requeued
