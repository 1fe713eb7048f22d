"""/v1/jobs: submit, list, inspect, follow metrics and logs, cancel."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import String, cast, func, select
from sqlalchemy.exc import IntegrityError

from api.deps import DeployKey, JobDep, ReadKey, SessionDep, WriteKey, submission_quota
from api.routes.models import deploy_job
from api.schemas import (
    EvaluateJobCreate,
    JobCreate,
    PretrainJobCreate,
    SweepJobCreate,
    errors,
    public,
)
from mec_client.models import (
    JobPublic,
    JobsPublic,
    JobValidated,
    LogLinePublic,
    LogsPublic,
    MetricsPublic,
    Series,
)
from mec_core.datafiles import DEFAULT_DIRS, missing
from mec_platform import datasets, joblogs, jobs, keys, paths, workers
from mec_platform.db import session_scope
from mec_platform.jobs import JobKind, JobStatus
from mec_platform.settings import get_settings
from mec_platform.specs import ID_MAX, DeploySpec
from mec_platform.tables import Job, Metric, Model

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=errors(400, 401, 403, 422))


@router.post("", response_model=JobPublic, status_code=201,
             dependencies=[Depends(submission_quota)],
             responses={200: {"model": JobPublic, "description": "The job submitted earlier "
                              "with this Idempotency-Key; nothing new was created."},
                        **errors(404, 409, 429)})
def submit_job(key: WriteKey, session: SessionDep, response: Response,
               spec: Annotated[JobCreate, Body()],
               idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None):
    """Submit a pretraining or evaluation job to the key's project; it is queued and runs
    on a worker."""
    # idempotency keys are per project: another project's use of the same key is not seen
    spec = _pinned(key, session, spec)
    stored_key = f"{key.project}:{idempotency_key}" if idempotency_key else None
    if stored_key:
        existing = session.scalar(select(Job).where(Job.idempotency_key == stored_key))
        if existing is not None:
            return _replay(existing, spec, response)
    _check(key, session, spec)
    try:
        job = jobs.submit(session, spec.kind, spec.config.model_dump(mode="json"), spec.queue,
                          spec.name, spec.tags, spec.priority, stored_key, key.project)
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won
        return _replay(session.scalar(select(Job).where(Job.idempotency_key == stored_key)),
                       spec, response)
    return public(job, capacity=workers.capacity(session))


def _replay(existing: Job, spec: JobCreate, response: Response) -> JobPublic:
    """The job an Idempotency-Key made, for a retry of the same submission (200); the
    key reused for another submission is a client's bug, answered 409 (as Stripe does)."""
    if (existing.kind, existing.name, existing.config) != (
            spec.kind, spec.name or spec.kind, spec.config.model_dump(mode="json")):
        raise HTTPException(409, f"Idempotency-Key: already used for job {existing.id}, "
                                 "submitted with another body; use a new key")
    response.status_code = 200
    return public(existing)


@router.post("/validate", response_model=JobValidated, responses=errors(404, 409))
def validate_job(key: WriteKey, session: SessionDep, spec: Annotated[JobCreate, Body()]):
    """The config a job of this spec would run with (every field resolved), after the
    checks a submission gets (422 naming the field), and why it would wait now; nothing
    is created."""
    spec = _pinned(key, session, spec)
    _check(key, session, spec)
    job = Job(kind=spec.kind, queue=spec.queue, config=spec.config.model_dump(mode="json"),
              status=JobStatus.QUEUED)
    return JobValidated(kind=spec.kind, queue=spec.queue, config=job.config,
                        waiting=workers.waiting_reason(job, workers.capacity(session)))


def _pinned(key, session, spec):
    """The spec with each dataset:// data_dir naming the exact version it will train or
    evaluate on (the latest, when it names none): 404 naming the field when there is none
    in the key's project; a dataset version is an image folder."""
    if isinstance(spec, SweepJobCreate):
        config, field = spec.config.base, "config.base.data_dir"
        dataset = config.get("dataset", "fashion-mnist")
    else:
        config, field = spec.config.model_dump(), "config.data_dir"
        dataset = spec.config.dataset
    uri = config.get("data_dir")
    if not (uri or "").startswith(datasets.SCHEME):
        return spec
    if dataset not in ("imagefolder", None):
        raise HTTPException(422, f"{field}: a dataset:// version is an image folder: set "
                                 f"{field.rsplit('.', 1)[0]}.dataset to imagefolder")
    try:
        exact = datasets.resolve(session, key.project, uri, field)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    if isinstance(spec, SweepJobCreate):
        return spec.model_copy(update={"config": spec.config.model_copy(
            update={"base": spec.config.base | {"data_dir": exact}})})
    return spec.model_copy(update={"config": spec.config.model_copy(
        update={"data_dir": exact})})


def _check(key, session, spec) -> None:
    """What a submission can know before queueing: every path under the data roots (one
    rule, mec_platform.paths), a dataset's files where the workers look (in the roots this
    API sees too), an evaluation's job."""
    roots = get_settings().allowed_data_roots
    try:
        if isinstance(spec, SweepJobCreate):
            paths.check_sweep(spec.config, roots)
        else:
            paths.check(spec.config.data_dir, "config.data_dir", roots)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    if isinstance(spec, SweepJobCreate):
        base = spec.config.base
        _check_dataset(base.get("dataset", "fashion-mnist"), base.get("data_dir"),
                       "config.base")
    if isinstance(spec, PretrainJobCreate):
        _check_dataset(spec.config.dataset, spec.config.data_dir)
        if spec.config.nodes > 1 and not get_settings().ray_address:
            raise HTTPException(422, f"config.nodes: a job of {spec.config.nodes} nodes runs "
                                     "on a Ray cluster, and this platform has none: set "
                                     "MEC_RAY_ADDRESS (or use nodes 1)")
    if isinstance(spec, EvaluateJobCreate):
        # the job named is a resource the body refers to: 404 when there is none (in the
        # key's projects), 409 when it is of another kind; the schema cannot say either
        target = session.get(Job, spec.config.job_id)
        if target is None or not keys.sees(key, target.project):
            raise HTTPException(404, f"config.job_id: job {spec.config.job_id} not found")
        if target.kind not in (JobKind.PRETRAIN, JobKind.IMPORT):
            raise HTTPException(409, f"config.job_id: job {spec.config.job_id} is a "
                                     f"{target.kind} job, not a pretraining or import job")
        if spec.config.dataset is not None:
            _check_dataset(spec.config.dataset, spec.config.data_dir, splits=("train", "test"))


def _check_dataset(dataset: str, data_dir: str | None, prefix: str = "config",
                   splits: tuple[str, ...] = ("train",)) -> None:
    """422 when the dataset's files are not where a worker will look, if this API sees
    that data root (one host, or a shared mount); where it does not, the worker that
    claims the job checks before training and fails it at once with the same words."""
    where = data_dir or DEFAULT_DIRS.get(dataset)
    if where is not None and not _root_seen(where):
        return
    problem = missing(dataset, data_dir, splits)
    if problem:
        raise HTTPException(422, f"{prefix}.{'data_dir' if data_dir else 'dataset'}: {problem}")


def _root_seen(path: str) -> bool:
    root = paths.root_of(path, get_settings().allowed_data_roots)
    return root is not None and root.is_dir()


@router.get("", response_model=JobsPublic)
def list_jobs(key: ReadKey, session: SessionDep, status: JobStatus | None = None,
              kind: JobKind | None = None,
              tag: str | None = Query(None, max_length=64),
              parent_id: int | None = Query(None, ge=1, le=ID_MAX,
                                            description="A sweep's trials."),
              limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=ID_MAX)):
    """The key's project's jobs (an admin key: every project's), newest first, filtered by
    status, kind, tag and parent (a sweep)."""
    query = select(Job)
    if not keys.sees_all(key):
        query = query.where(Job.project == key.project)
    if status:
        query = query.where(Job.status == status)
    if kind:
        query = query.where(Job.kind == kind)
    if parent_id:
        query = query.where(Job.parent_id == parent_id)
    if tag:
        escaped = tag.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(cast(Job.tags, String).like(f'%"{escaped}"%', escape="\\"))
    count = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    capacity = workers.capacity(session) if any(j.status == JobStatus.QUEUED for j in rows) \
        else None
    return JobsPublic(data=[public(j, capacity=capacity) for j in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic, responses=errors(404))
def get_job(_: ReadKey, job: JobDep, session: SessionDep):
    """One job: status, progress, ETA, last metrics, error (or, queued, why it waits),
    worker and times."""
    return public(job, capacity=workers.capacity(session) if job.status == JobStatus.QUEUED
                  else None)


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses=errors(404))
def get_metrics(_: ReadKey, job: JobDep, session: SessionDep,
                name: Annotated[list[str] | None, Query(max_length=50)] = None,
                since_step: int = Query(0, ge=0, le=ID_MAX),
                max_points: int = Query(1000, ge=1, le=100_000)):
    """Metric series after `since_step`, downsampled to at most `max_points` per series."""
    last = session.scalar(select(func.max(Metric.step)).where(Metric.job_id == job.id,
                                                              Metric.step > since_step))
    if last is None:
        return MetricsPublic(job_id=job.id, stride=1, last_step=since_step, series={})
    stride = max(1, math.ceil((last - since_step) / max_points))
    query = select(Metric.name, Metric.step, Metric.value).where(
        Metric.job_id == job.id, Metric.step > since_step)
    if stride > 1:  # keep every stride-th step, and the newest one
        query = query.where((Metric.step.op("%")(stride) == 0) | (Metric.step == last))
    if name:
        query = query.where(Metric.name.in_(name))
    series: dict[str, Series] = {}
    for metric, step, value in session.execute(query.order_by(Metric.name, Metric.step)):
        entry = series.setdefault(metric, Series(steps=[], values=[]))
        entry.steps.append(step)
        entry.values.append(value)
    return MetricsPublic(job_id=job.id, stride=stride, last_step=last, series=series)


@router.get("/{job_id}/logs", response_model=LogsPublic, responses={
    **errors(404), 200: {"content": {"text/event-stream": {}}, "description":
                         "With follow=true: Server-Sent Events, one `line` event per line "
                         "(`id` the line's id, `data` the line as JSON), then one `end` "
                         "event (`data`: the job's status) once the job has finished."}})
def get_logs(_: ReadKey, job: JobDep, session: SessionDep,
             attempt: int | None = Query(None, ge=1, le=ID_MAX, description="Only this run "
                                         "of the job."),
             since: int = Query(0, ge=0, le=2**62, description="Lines after this line id."),
             limit: int = Query(1000, ge=1, le=10_000),
             follow: bool = Query(False, description="Stream lines as they come, until the "
                                  "job has finished."),
             last_event_id: Annotated[int | None, Header(ge=0, le=2**62)] = None):
    """The job's own log lines (its trainer's, the worker's about it, its ranks', with
    tracebacks), oldest first; the newest MEC_JOB_LOG_LINES lines of a job are kept."""
    if follow:
        return StreamingResponse(_follow(job.id, attempt, last_event_id or since),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})
    lines = [LogLinePublic.model_validate(line)
             for line in joblogs.read(session, job.id, since, attempt, limit)]
    return LogsPublic(job_id=job.id, lines=lines, next=lines[-1].id if lines else since)


FOLLOW_POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0


def _follow(job_id: int, attempt: int | None, since: int) -> Iterator[str]:
    """Server-Sent Events of the job's lines after `since`, polled from the database (the
    worker writes them every half second), ended once the job has finished and every line
    it wrote has been sent (its worker writes the last ones before the job ends)."""
    quiet = 0.0
    while True:
        with session_scope() as s:
            status = s.scalar(select(Job.status).where(Job.id == job_id))
            lines = [LogLinePublic.model_validate(line)
                     for line in joblogs.read(s, job_id, since, attempt)]
        for line in lines:
            yield f"event: line\nid: {line.id}\ndata: {line.model_dump_json()}\n\n"
        if lines:
            since, quiet = lines[-1].id, 0.0
            continue
        if status is None or status in jobs.FINISHED:
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if quiet >= KEEPALIVE_SECONDS:  # a comment line keeps proxies from closing
            yield ": waiting\n\n"
            quiet = 0.0
        time.sleep(FOLLOW_POLL_SECONDS)
        quiet += FOLLOW_POLL_SECONDS


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=errors(404, 409))
def cancel_job(_: WriteKey, job: JobDep, session: SessionDep):
    """Cancel a job: a queued one at once, a running one within seconds (it keeps its last
    checkpoint); a sweep with all its unfinished trials. 409 if it already finished."""
    if jobs.cancel(session, job.id) is None:
        session.refresh(job)
        raise HTTPException(409, f"job {job.id} is already {job.status}")
    if job.kind == JobKind.SWEEP:
        trials = session.scalars(select(Job.id).where(
            Job.parent_id == job.id, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING))))
        for trial in trials.all():
            jobs.cancel(session, trial, reason=f"sweep {job.id} was cancelled")
    session.refresh(job)
    return public(job)


@router.post("/{job_id}/promote", response_model=JobPublic, status_code=202,
             responses=errors(404, 409))
def promote(_: DeployKey, job: JobDep, session: SessionDep):
    """Deploy the model of a finished sweep's best trial; returns the deploy job."""
    best = (job.result or {}).get("best") if job.kind == JobKind.SWEEP else None
    if job.status != JobStatus.SUCCEEDED or not best:
        raise HTTPException(409, f"job {job.id} is not a succeeded sweep with a best trial")
    model = session.scalar(select(Model).where(Model.job_id == best["job_id"]))
    if model is None:
        raise HTTPException(409, f"the best trial, job {best['job_id']}, has no model")
    return deploy_job(session, model, "deploy", DeploySpec())
