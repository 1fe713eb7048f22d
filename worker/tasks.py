"""Celery tasks, written once as a pattern: claim the job, keep its lease while the work
runs, end it with the outcome (failed with a reason on any error), the final write retried
through database outages. Each task's work is like a web view: load the job by id, call
mec_core, say what to record. Delivering the same message twice is harmless: only the
claim that wins runs."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celery.utils.log import get_task_logger
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from mec_core.config import BUILT_IN, stored_config
from mec_core.datafiles import missing
from mec_core.evaluate import evaluate
from mec_core.export import export
from mec_core.train import TrainingDiverged, train
from mec_platform import datasets, jobs, paths, storage
from mec_platform.db import retrying, session_scope
from mec_platform.jobs import JobKind, JobStatus
from mec_platform.queue import app
from mec_platform.settings import get_settings
from mec_platform.specs import DeploySpec, EvaluateSpec
from mec_platform.storage import StorageError
from mec_platform.tables import Evaluation, Job, Model, Worker
from worker import galleries, job_store, kept, multiprocess, prometheus, sweeps
from worker.callbacks import DatabaseCallbacks
from worker.device import describe_device, process_capacity
from worker.joblog import JobLogHandler
from worker.lease import LeaseKeeper
from worker.process import new_owner, shutting_down, worker_name

log = get_task_logger(__name__)
DEPLOY_WAIT_POLL_SECONDS = 1.0  # a deploy behind another of the same model looks this often


class JobFailed(RuntimeError):
    """The work cannot succeed; the message is the job's error."""


class JobCancelled(Exception):
    """The job's cancel flag, read as its work reported progress (_progress): it ends
    cancelled there."""


@dataclass
class Outcome:
    """How a job ends: its status, result or error, and rows written in the same
    transaction as the status (only if the job was still ours)."""

    status: JobStatus
    result: dict | None = None
    error: str | None = None
    record: Callable[[Session], None] | None = None


def _load(read: Callable[[Session], object]):
    """Read what the work needs, retried through a database outage."""
    def once():
        with session_scope() as s:
            return read(s)
    return retrying(once)


def _set_current_job(job_id: int | None, was: int | None = None) -> None:
    prometheus.CURRENT_JOB.set(job_id or 0)
    where = [Worker.name == worker_name()] + ([Worker.current_job == was] if was else [])
    with session_scope() as s:
        s.execute(update(Worker).where(*where).values(current_job=job_id))


def _end(job_id: int, owner: str, outcome: Outcome) -> None:
    def write() -> bool:
        with session_scope() as s:
            done = jobs.finish(s, job_id, owner, outcome.status, error=outcome.error,
                               result=outcome.result)
            if done and outcome.record is not None:
                outcome.record(s)
            return done
    if retrying(write) and outcome.status == JobStatus.QUEUED:  # handed back: ring again
        with session_scope() as s:
            jobs.enqueue_again(s, [job_id])


def _execute(job_id: int, work: Callable[[int, str], Outcome | None]) -> None:
    """Claim the job, keep its lease alive while `work(job_id, owner)` runs, end it with
    the outcome `work` returns (None: the job is no longer ours, write nothing)."""
    if shutting_down.is_set():  # a message taken during a warm shutdown: pass it on
        with session_scope() as s:
            jobs.enqueue_again(s, [job_id])
        return
    settings = get_settings()
    owner = new_owner()
    with session_scope() as s:
        claimed = jobs.claim(s, job_id, owner, socket.gethostname(), describe_device(),
                             settings.lease_seconds)
    if not claimed:
        log.info("job %s is not queued (already claimed, cancelled or finished)", job_id)
        return
    _set_current_job(job_id)
    attempt = _load(lambda s: s.get(Job, job_id).attempts)
    try:
        with LeaseKeeper(job_id, owner, settings.lease_seconds, settings.heartbeat_seconds):
            reason = "reported"  # a failed outcome the work returned
            with JobLogHandler(job_id, attempt):  # all written before the job ends
                log.info("job %s: attempt %s on %s (%s)", job_id, attempt,
                         socket.gethostname(), describe_device())
                try:
                    outcome = work(job_id, owner)
                except JobCancelled as exc:
                    log.info("job %s: cancelled at %s", job_id, exc)
                    outcome = Outcome(JobStatus.CANCELLED)
                except JobFailed as exc:
                    outcome = Outcome(JobStatus.FAILED, error=str(exc))
                    reason = type(exc.__cause__ or exc).__name__
                except Exception as exc:  # the job must end failed, never stay running
                    log.exception("job %s: %s", job_id, type(exc).__name__)
                    outcome = Outcome(JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
                    reason = type(exc).__name__
                if outcome is not None and outcome.status == JobStatus.FAILED:
                    log.error("job %s failed: %s", job_id, outcome.error)
                elif outcome is not None:
                    if outcome.status == JobStatus.SUCCEEDED and \
                            _load(lambda s: s.get(Job, job_id).cancel_requested):
                        log.info("job %s: the cancel came after its work was done; it "
                                 "succeeds", job_id)
                    log.info("job %s: %s", job_id, outcome.status)
            if outcome is not None:
                _end(job_id, owner, outcome)
                _load(lambda s: jobs.drop_staged(s.get(Job, job_id)))
                kind = work.__name__.removeprefix("run_")
                prometheus.JOBS.labels(kind, outcome.status).inc()
                if outcome.status == JobStatus.FAILED:
                    prometheus.FAILURES.labels(kind, reason).inc()
                parent = _load(lambda s: s.get(Job, job_id).parent_id)
                if parent is not None and outcome.status in jobs.FINISHED:
                    advance_sweep(parent)  # a trial ended: its sweep goes on at once
    finally:
        _set_current_job(None, was=job_id)


@app.task(name="mec.pretrain")
def pretrain(job_id: int) -> None:
    """Run (or resume) the pretraining of job `job_id`, unless it needs more processes than
    this worker can run: then it stays queued (the API says why) and the reconciler rings
    again later, for a worker that can."""
    config = _load(lambda s: s.get(Job, job_id).config or {})
    needs, capacity = config.get("processes", 1), process_capacity()
    if needs > capacity and config.get("nodes", 1) == 1:  # more nodes: Ray's processes
        log.warning("job %s needs %s processes; this worker runs %s: left queued", job_id,
                    needs, capacity)
        return
    if str(config.get("device", "auto")).startswith("cuda") and \
            not describe_device().startswith("cuda") and config.get("nodes", 1) == 1:
        log.warning("job %s asks for a GPU; this worker has none: left queued", job_id)
        return
    _execute(job_id, run_pretrain)


def run_pretrain(job_id: int, owner: str) -> Outcome | None:
    settings = get_settings()
    config, name, project = _load(lambda s: (stored_config(s.get(Job, job_id).config),
                                             s.get(Job, job_id).name, s.get(Job, job_id).project))
    config = config.model_copy(update={"data_dir": _local_dir(project, config.data_dir)})
    out = job_store.folder(job_id)
    if problem := missing(config.dataset, config.data_dir):  # before any process starts
        raise JobFailed(problem)
    log.info("job %s: training %s on %s in %s node(s) x %s process(es)", job_id,
             config.backbone, config.dataset, config.nodes, config.processes)
    try:
        job_store.fetch_newest(job_id)  # a resumed job: its checkpoint, from another host
        if config.nodes > 1:
            from worker import ray_run  # Ray is an optional extra of the platform
            result, cancelled = ray_run.launch(job_id, owner, out, shutting_down)
        elif config.processes > 1:
            result, cancelled = multiprocess.launch(job_id, owner, config.processes, out,
                                                    shutting_down)
        else:
            callbacks = DatabaseCallbacks(job_id, owner, settings.cancel_poll_seconds,
                                          shutting_down)
            try:
                result = train(config, out, callbacks, resume=True)
            finally:
                callbacks.close()
            cancelled = callbacks.cancelled
    except TrainingDiverged as exc:
        raise JobFailed(f"training diverged: {exc}") from exc
    except multiprocess.RanksFailed as exc:
        raise JobFailed(str(exc)) from exc
    except multiprocess.RanksDied as exc:
        return _after_ranks_died(job_id, exc)
    if result.stopped:
        if cancelled:
            return Outcome(JobStatus.CANCELLED, result={"steps": result.steps})
        if shutting_down.is_set():
            log.warning("job %s: worker shutting down; re-queued at step %s", job_id,
                        result.steps)
            return Outcome(JobStatus.QUEUED)
        return None  # the job was taken from us; its new owner carries on
    summary = {"steps": result.steps, "images_per_sec": round(result.images_per_sec, 2),
               **result.last}
    return _model_outcome(job_id, result.checkpoint, name, summary)


def _local_dir(project: str, data_dir: str | None) -> str | None:
    """`data_dir` as a path on this host: a dataset:// version unpacked into the cache
    first (where a job's ranks find it too); the job fails at once, with the reason, when
    the version is gone."""
    try:
        with session_scope() as s:
            return datasets.local_dir(s, project, data_dir)
    except (LookupError, StorageError) as exc:
        raise JobFailed(str(exc)) from exc


def _after_ranks_died(job_id: int, exc: multiprocess.RanksDied) -> Outcome:
    """Back to the queue, to resume from the last checkpoint, while attempts are left."""
    attempts = _load(lambda s: s.get(Job, job_id).attempts)
    if attempts >= get_settings().max_attempts:
        return Outcome(JobStatus.FAILED, error=f"{exc}; gave up after {attempts} attempts")
    log.warning("job %s: %s; re-queued", job_id, exc)
    return Outcome(JobStatus.QUEUED, error=f"{exc}; re-queued to resume from its last "
                   "checkpoint")


def _model_outcome(job_id: int, checkpoint: Path, name: str, summary: dict,
                   stored_checkpoint: str | None = None) -> Outcome:
    """Export the encoder of `checkpoint` (loaded with weights_only) and store it with the
    checkpoint (unless it is `stored_checkpoint` already); the job succeeds with a model of
    them."""
    paths = export(checkpoint, job_store.folder(job_id) / "export")
    config = stored_config(json.loads(paths["meta"].read_text())["config"])
    files = paths if stored_checkpoint else {"checkpoint": checkpoint, **paths}
    artifacts = ({"checkpoint": stored_checkpoint} if stored_checkpoint else {}) | \
        job_store.keep_artifacts(job_id, files)
    job_store.clear(job_id)
    return Outcome(JobStatus.SUCCEEDED, result=summary, record=lambda s: s.add(Model(
        job_id=job_id, project=s.get(Job, job_id).project, name=name,
        backbone=config.backbone, dataset=config.dataset, artifacts=artifacts)))


@app.task(name="mec.import")
def import_job(job_id: int) -> None:
    """Make a model of an uploaded training checkpoint."""
    _execute(job_id, run_import)


def run_import(job_id: int, owner: str) -> Outcome:
    config, name = _load(lambda s: (s.get(Job, job_id).config, s.get(Job, job_id).name))
    try:  # weights_only: a crafted pickle fails here without running any code
        return _model_outcome(job_id, storage.local_file(config["checkpoint"]), name,
                              {"uploaded": config["filename"]}, config["checkpoint"])
    except Exception as exc:
        raise JobFailed(f"not a usable MEC checkpoint: {type(exc).__name__}: {exc}") from exc


@app.task(name="mec.evaluate")
def evaluate_job(job_id: int) -> None:
    """Evaluate the encoder of a finished pretraining job."""
    _execute(job_id, run_evaluate)


def _evaluation_inputs(s: Session, job_id: int) -> tuple[EvaluateSpec, int, str, str, str | None]:
    spec = EvaluateSpec(**s.get(Job, job_id).config)
    model = s.scalar(select(Model).where(Model.job_id == spec.job_id))
    source = s.get(Job, spec.job_id)
    if model is None:
        status = source.status if source else "missing"
        raise JobFailed(f"job {spec.job_id} has no finished model (it is {status})")
    dataset = spec.dataset or model.dataset
    data_dir = spec.data_dir or (source.config.get("data_dir") if spec.dataset in
                                 (None, model.dataset) and dataset not in BUILT_IN else None)
    return spec, model.id, model.artifacts["checkpoint"], dataset, data_dir


def run_evaluate(job_id: int, owner: str) -> Outcome:
    spec, model_id, checkpoint, dataset, data_dir = _load(
        lambda s: _evaluation_inputs(s, job_id))
    data_dir = _local_dir(_load(lambda s: s.get(Job, job_id).project), data_dir)
    if problem := missing(dataset, data_dir, ("train", "test")):
        raise JobFailed(problem)
    train_features = []  # kept once the evaluation has its result, not before
    keeping = get_settings().keep_evaluation_features
    result = evaluate(spec.protocol, dataset, checkpoint_path=storage.local_file(checkpoint),
                      data_dir=data_dir,
                      train_limit=spec.train_limit, test_limit=spec.test_limit, k=spec.k,
                      temperature=spec.temperature, steps=spec.steps,
                      on_progress=lambda done, total: _progress(job_id, done, total),
                      on_train_features=(lambda *pair: train_features.append(pair))
                      if keeping else None)
    for digest, features in train_features:
        kept.keep(model_id, job_id, digest, features)
    return Outcome(JobStatus.SUCCEEDED, result=result, record=lambda s: s.add(Evaluation(
        model_id=model_id, job_id=job_id, protocol=spec.protocol, dataset=dataset,
        top1=result["top1"], top5=result["top5"], result=result)))


@app.task(name="mec.gallery")
def gallery_job(job_id: int) -> None:
    """Add a large batch of staged items to a gallery."""
    _execute(job_id, run_gallery)


def run_gallery(job_id: int, owner: str) -> Outcome | None:
    try:
        ended = galleries.run_add(job_id, owner)
    except galleries.GalleryGone as exc:
        raise JobFailed(str(exc)) from None
    return None if ended is None else Outcome(*ended)


@app.task(name="mec.sweep")
def sweep_job(job_id: int) -> None:
    """Start (or advance) a sweep."""
    advance_sweep(job_id)


def advance_sweep(job_id: int) -> None:
    """One tick of the sweep (worker.sweeps.tick) unless another worker is at it: a queued
    sweep is claimed, a running one held only for the tick."""
    settings = get_settings()
    owner = new_owner()
    with session_scope() as s:
        if not (jobs.claim(s, job_id, owner, socket.gethostname(), describe_device(),
                           settings.lease_seconds)
                or jobs.take_for_tick(s, job_id, owner, settings.lease_seconds)):
            return
    try:
        ended = sweeps.tick(job_id)
    except Exception as exc:
        log.exception("sweep %s: tick failed", job_id)
        _end(job_id, owner, Outcome(JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}"))
        return
    if ended is None:
        with session_scope() as s:
            jobs.let_go(s, job_id, owner)
    else:
        _end(job_id, owner, Outcome(*ended))


def advance_sweeps() -> None:
    """Tick every sweep that is not finished (the workers' heartbeat loop calls this)."""
    with session_scope() as s:
        ids = s.scalars(select(Job.id).where(
            Job.kind == JobKind.SWEEP, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
            Job.lease_expires.is_(None))).all()
    for job_id in ids:
        advance_sweep(job_id)


def _check_reference_dir(spec: DeploySpec, artifacts: dict, roots: list[Path]) -> None:
    """The reference set's folder obeys the path rule, also when it comes from the model's
    stored config, which an uploaded checkpoint sets (serving.package falls back to it)."""
    stored = json.loads(storage.local_file(artifacts["meta"]).read_text())["config"]
    if spec.reference_data_dir is None and spec.reference_dataset in (None, stored["dataset"]):
        field, value = "the model's config.data_dir (give reference_data_dir)", \
            stored.get("data_dir")
    else:
        field, value = "reference_data_dir", spec.reference_data_dir
    try:
        paths.check(value, field, roots)
    except ValueError as exc:
        raise JobFailed(str(exc)) from None


def _progress(job_id: int, done: int, total: int) -> None:
    """A job's progress in its own units (a deploy: reference images embedded of all; an
    evaluation: train and test images embedded of all). Raises JobCancelled when the job's
    cancel flag is set (read by the same statement): the work stops at its next batch."""
    def write() -> bool:
        with session_scope() as s:
            return s.execute(update(Job).where(Job.id == job_id)
                             .values(step=done, total_steps=total)
                             .returning(Job.cancel_requested)).scalar_one()
    if retrying(write):
        raise JobCancelled(f"{done} of {total}")


@app.task(name="mec.deploy")
def deploy_job(job_id: int) -> None:
    """Deploy or undeploy a model with TorchServe."""
    _execute(job_id, run_deploy)


def _deploy_turn(s: Session, job_id: int) -> tuple[str, int | None]:
    """Whether this deploy (or undeploy) may start now: "go", "wait" (behind job N),
    "cancel" (its own cancel came) or "superseded" (job N, submitted after it, already
    succeeded), decided with the model's row locked and recorded on the job:
    its `placement` says {"deploying": true} once it goes, {"waiting": why} while it waits
    (what GET /v1/jobs/{id} shows as `waiting`)."""
    me = s.get(Job, job_id)
    model_id = me.config["model_id"]
    # locked till this transaction ends: an UPDATE locks the row on PostgreSQL and, on
    # SQLite (which has no row locks, nor FOR UPDATE), takes the database's write lock
    s.execute(update(Model).where(Model.id == model_id).values(id=Model.id))
    s.refresh(me)
    if me.cancel_requested:
        return "cancel", None
    others = [j for j in s.scalars(select(Job).where(
        Job.kind == JobKind.DEPLOY, Job.project == me.project, Job.id != job_id,
        or_(Job.status == JobStatus.RUNNING,
            and_(Job.status == JobStatus.SUCCEEDED, Job.id > job_id)))).all()
        if j.config.get("model_id") == model_id]
    later = [j.id for j in others if j.status == JobStatus.SUCCEEDED]
    if later:
        return "superseded", max(later)
    # submission order, except behind one that already started (a retry of an earlier job,
    # its worker killed, finds a later one deploying)
    ahead = sorted(j.id for j in others if j.id < job_id or (j.placement or {}).get("deploying"))
    me.placement = {"waiting": f"behind job {ahead[0]}, a deploy of the same model"} \
        if ahead else {"deploying": True}
    return ("wait", ahead[0]) if ahead else ("go", None)


def _one_deploy_at_a_time(job_id: int) -> Outcome | None:
    """Deploys and undeploys of one model run one at a time, the last submitted winning:
    each takes the next version number from the deployment the one before it recorded (two
    at once built the same version in the same staging folder), and a retry (its worker
    killed) that a later one has overtaken does nothing. None: go on; else the outcome it
    ends with. Raises JobCancelled when its own cancel comes while it waits."""
    told = None
    while True:
        turn, other = _load(lambda s: _deploy_turn(s, job_id))
        if turn == "go":
            return None
        if turn == "cancel":
            raise JobCancelled("its start" + (f", behind job {told}" if told else ""))
        if turn == "superseded":
            why = f"superseded by job {other}, a deploy of the same model submitted after it"
            log.info("job %s: %s, which has succeeded", job_id, why)
            return Outcome(JobStatus.CANCELLED, error=why)
        if other != told:
            told = other
            log.info("job %s: waiting for job %s, a deploy of the same model, to finish",
                     job_id, told)
        time.sleep(DEPLOY_WAIT_POLL_SECONDS)


def run_deploy(job_id: int, owner: str) -> Outcome:
    from worker import deploy

    if (superseded := _one_deploy_at_a_time(job_id)) is not None:
        return superseded

    def read(s: Session):
        job = s.get(Job, job_id)
        config = dict(job.config)
        model = s.get(Model, config.pop("model_id"))
        return (config.pop("action"), config, model.id, model.artifacts, model.deployment,
                job.project)

    action, config, model_id, artifacts, previous, project = _load(read)
    settings = get_settings()
    if action == "deploy":
        spec = DeploySpec(**config)
        _check_reference_dir(spec, artifacts, settings.allowed_data_roots)
        spec = spec.model_copy(update={"reference_data_dir": _local_dir(
            project, spec.reference_data_dir)})  # a dataset:// version: unpacked here
        record = deploy.deploy(settings, model_id, artifacts, previous, spec,
                               on_progress=lambda done, total: _progress(job_id, done, total))
        reused = record.reference_reused_from
        log.info("job %s: reference set %s", job_id, f"from evaluation job {reused}'s features "
                 "of the same images" if reused else "embedded")
    else:
        record = deploy.undeploy(settings, model_id, previous)
    return Outcome(JobStatus.SUCCEEDED, result=record.public(), record=lambda s: s.execute(
        update(Model).where(Model.id == model_id).values(deployment=record)))
