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

from api.deps import DeployKey, JobDep, ReadKey, SessionDep, WriteKey, submission_quota
from api.schemas import JobCreate, PretrainJobCreate, errors, public
from mec_client.models import (
    JobPublic,
    JobsPublic,
    JobValidated,
    LogLinePublic,
    LogsPublic,
    MetricsPublic,
    Series,
)
from mec_core.config import resolved
from mec_platform import datasets, deployments, joblogs, jobs, keys, workers
from mec_platform.db import session_scope
from mec_platform.jobs import JobKind, JobStatus
from mec_platform.keys import Scope
from mec_platform.specs import ID_MAX
from mec_platform.tables import Job, Metric

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=errors(400, 401, 403, 422))
NO_JOB = {404: "No such job in the key's projects."}


@router.post("", response_model=JobPublic, status_code=201,
             dependencies=[Depends(submission_quota)],
             responses={200: {"model": JobPublic, "description": "The job submitted earlier "
                              "with this Idempotency-Key; nothing new was created."},
                        **errors({404: "config.job_id or config.data_dir: no such job to "
                                  "evaluate, or dataset version.",
                                  409: "config.job_id names a job of another kind, or the "
                                  "Idempotency-Key was used for another body.",
                                  429: "Too many submissions for this key; see Retry-After."})})
def submit_job(key: WriteKey, session: SessionDep, response: Response,
               spec: Annotated[JobCreate, Body()],
               idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None):
    """Submit a pretraining or evaluation job to the key's project; it is queued and runs
    on a worker."""
    config = datasets.pinned(session, key.project, spec.config)
    job, new = jobs.submit_once(session, key, idempotency_key, spec.kind, config,
                                spec.queue, spec.name, spec.tags, spec.priority)
    if not new:
        response.status_code = 200
        return public(job)
    return public(job, capacity=workers.capacity(session))


@router.post("/validate", response_model=JobValidated, responses=errors({
    404: "config.job_id or config.data_dir: no such job to evaluate, or dataset version.",
    409: "config.job_id names a job of another kind."}))
def validate_job(key: WriteKey, session: SessionDep, spec: Annotated[JobCreate, Body()]):
    """The config a job of this spec would run with (every field resolved), after the
    checks a submission gets (422 naming the field), and why it would wait now; nothing
    is created."""
    config = datasets.pinned(session, key.project, spec.config)
    jobs.check(session, key, config)
    job = Job(kind=spec.kind, queue=spec.queue, config=config.model_dump(mode="json"),
              status=JobStatus.QUEUED)
    config = resolved(config) if isinstance(spec, PretrainJobCreate) else job.config
    return JobValidated(kind=spec.kind, queue=spec.queue, config=config,
                        waiting=workers.waiting_reason(job, workers.capacity(session)))


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


@router.get("/{job_id}", response_model=JobPublic, responses=errors(NO_JOB))
def get_job(_: ReadKey, job: JobDep, session: SessionDep):
    """One job: status, progress, ETA, last metrics, error (or, queued, why it waits),
    worker and times."""
    return public(job, capacity=workers.capacity(session) if job.status == JobStatus.QUEUED
                  else None)


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses=errors(NO_JOB))
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
    query = select(Metric.name, Metric.step, Metric.value, Metric.time).where(
        Metric.job_id == job.id, Metric.step > since_step)
    if stride > 1:  # keep every stride-th step, and the newest one
        query = query.where((Metric.step.op("%")(stride) == 0) | (Metric.step == last))
    if name:
        query = query.where(Metric.name.in_(name))
    series: dict[str, Series] = {}
    for metric, step, value, at in session.execute(query.order_by(Metric.name, Metric.step)):
        entry = series.setdefault(metric, Series(steps=[], values=[], times=[]))
        entry.steps.append(step)
        entry.values.append(value)
        entry.times.append(round(at.timestamp(), 3))
    return MetricsPublic(job_id=job.id, stride=stride, last_step=last, series=series)


@router.get("/{job_id}/logs", response_model=LogsPublic, responses={
    **errors(NO_JOB), 200: {"content": {"text/event-stream": {}}, "description":
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


# the kinds of job that another scope than jobs:write starts: cancelling one takes it too
STARTED_WITH = {JobKind.DEPLOY: (Scope.MODELS_DEPLOY, "a deploy job"),
                JobKind.GALLERY: (Scope.EMBED, "a gallery import")}


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=errors(
    NO_JOB, {403: "The key lacks jobs:write, or the scope that starts the job's kind: "
                  "models:deploy for a deploy job, embed for a gallery import.",
             409: "The job has already finished."}))
def cancel_job(key: WriteKey, job: JobDep, session: SessionDep):
    """Cancel a job: a queued one at once, a running one within seconds (it keeps its last
    checkpoint); a sweep with all its unfinished trials. A deploy job or a gallery import
    needs the scope that starts one too (models:deploy, embed). 409 if it already
    finished."""
    if job.kind in STARTED_WITH:
        scope, what = STARTED_WITH[job.kind]
        if not keys.allows(key, scope):
            raise HTTPException(403, f"API key {key.prefix}... lacks the scope '{scope}' "
                                     f"(job {job.id} is {what}: cancelling it takes the "
                                     "scope that starts one)")
    jobs.cancel_job(session, job)
    return public(job)


@router.post("/{job_id}/promote", response_model=JobPublic, status_code=202,
             responses=errors(NO_JOB, {409: "The job is not a succeeded sweep whose best "
                                       "trial has a model."}))
def promote(_: DeployKey, job: JobDep, session: SessionDep):
    """Deploy the model of a finished sweep's best trial; returns the deploy job."""
    return public(deployments.promote(session, job))
