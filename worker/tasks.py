"""Celery tasks. Each one is like a web view: load the job by id, call mec_core, persist,
report. Delivering the same message twice is harmless: only the claim that wins runs."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

from celery.utils.log import get_task_logger
from sqlalchemy import select, update

from api import jobs
from api.db import retrying, session_scope
from api.models import Evaluation, Job, Model, Worker
from api.schemas import DeploySpec, EvaluateSpec
from api.settings import get_settings
from mec_core.config import TrainConfig
from mec_core.evaluate import evaluate
from mec_core.export import export
from mec_core.train import TrainingDiverged, train
from worker.callbacks import DatabaseCallbacks
from worker.device import describe_device
from worker.lease import LeaseKeeper
from worker.queue import app, enqueue

log = get_task_logger(__name__)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _claim(job_id: int, owner: str) -> bool:
    settings = get_settings()
    with session_scope() as s:
        if not jobs.claim(s, job_id, owner, socket.gethostname(), describe_device(),
                          settings.lease_seconds):
            return False
        s.execute(update(Worker).where(Worker.name == app_worker_name())
                  .values(current_job=job_id))
    return True


def _release(job_id: int) -> None:
    with session_scope() as s:
        s.execute(update(Worker).where(Worker.name == app_worker_name(),
                                       Worker.current_job == job_id).values(current_job=None))


def app_worker_name() -> str:
    return os.environ.get("MEC_WORKER_NAME", f"{socket.gethostname()}:{os.getpid()}")


def _enqueue_again(job_id: int) -> None:
    """Send a fresh message for `job_id` on its own queue, kind and priority."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        kind, queue, priority = job.kind, job.queue, job.priority
    enqueue(job_id, kind, queue, priority)


def _fail(job_id: int, owner: str, error: str) -> None:
    log.error("job %s failed: %s", job_id, error)
    retrying(lambda: _finish(job_id, owner, "failed", error=error))


def _finish(job_id: int, owner: str, status: str, **kw) -> bool:
    with session_scope() as s:
        return jobs.finish(s, job_id, owner, status, **kw)


def _execute(job_id: int, run) -> None:
    """Claim the job, keep its lease alive while `run(job_id, owner)` works, let go."""
    from worker.runtime import shutting_down

    settings = get_settings()
    if shutting_down.is_set():  # a message taken during a warm shutdown: pass it on
        _enqueue_again(job_id)
        return
    owner = _owner()
    if not _claim(job_id, owner):
        log.info("job %s is not queued (already claimed, cancelled or finished)", job_id)
        return
    try:
        with LeaseKeeper(job_id, owner, settings.lease_seconds, settings.heartbeat_seconds):
            run(job_id, owner)
    finally:
        _release(job_id)


@app.task(name="mec.pretrain")
def pretrain(job_id: int) -> None:
    """Run (or resume) the MEC pretraining of job `job_id`."""
    _execute(job_id, run_pretrain)


def run_pretrain(job_id: int, owner: str) -> None:
    settings = get_settings()
    with session_scope() as s:
        job = s.get(Job, job_id)
        config, name = TrainConfig(**job.config), job.name
    out = settings.artifacts / "jobs" / str(job_id)
    from worker.runtime import shutting_down

    callbacks = DatabaseCallbacks(job_id, owner, settings.cancel_poll_seconds, shutting_down)
    log.info("job %s: training %s on %s", job_id, config.backbone, config.dataset)
    try:
        result = train(config, out, callbacks, resume=True)
    except TrainingDiverged as exc:
        return _fail(job_id, owner, f"training diverged: {exc}")
    except Exception as exc:  # the job must end failed, never stay running
        return _fail(job_id, owner, f"{type(exc).__name__}: {exc}")
    if result.stopped:
        if callbacks.cancelled:
            retrying(lambda: _finish(job_id, owner, "cancelled",
                                     result={"steps": result.steps}))
        elif callbacks.shutting_down.is_set() and retrying(
                lambda: _finish(job_id, owner, "queued")):
            log.warning("job %s: worker shutting down; re-queued at step %s", job_id,
                        result.steps)
            _enqueue_again(job_id)
        return  # otherwise the job was taken from us; its new owner carries on
    summary = {"steps": result.steps, "images_per_sec": round(result.images_per_sec, 2),
               **result.last}
    _register_model(job_id, owner, result.checkpoint, out, name, summary)


def _register_model(job_id: int, owner: str, checkpoint: Path, out: Path, name: str,
                    summary: dict) -> None:
    """Export the encoder of `checkpoint` (loaded with weights_only) under `out`, finish
    the job and add its model."""
    paths = export(checkpoint, out / "export")
    config = TrainConfig(**json.loads(paths["meta"].read_text())["config"])
    artifacts = {"checkpoint": str(checkpoint), **{k: str(v) for k, v in paths.items()}}

    def register() -> None:
        with session_scope() as s:
            if jobs.finish(s, job_id, owner, "succeeded", result=summary):
                s.add(Model(job_id=job_id, name=name, backbone=config.backbone,
                            dataset=config.dataset, artifacts=artifacts))
    retrying(register)


@app.task(name="mec.import")
def import_job(job_id: int) -> None:
    """Make a model of an uploaded training checkpoint."""
    _execute(job_id, run_import)


def run_import(job_id: int, owner: str) -> None:
    with session_scope() as s:
        job = s.get(Job, job_id)
        checkpoint, name = Path(job.config["checkpoint"]), job.name
    try:  # weights_only: a crafted pickle fails here without running any code
        _register_model(job_id, owner, checkpoint, checkpoint.parent, name,
                        {"uploaded": job.config["filename"]})
    except Exception as exc:  # the job must end failed, never stay running
        _fail(job_id, owner, f"not a usable MEC checkpoint: {type(exc).__name__}: {exc}")


@app.task(name="mec.evaluate")
def evaluate_job(job_id: int) -> None:
    """Evaluate the encoder of a finished pretraining job."""
    _execute(job_id, run_evaluate)


def run_evaluate(job_id: int, owner: str) -> None:
    with session_scope() as s:
        spec = EvaluateSpec(**s.get(Job, job_id).config)
        model = s.scalar(select(Model).where(Model.job_id == spec.job_id))
        source = s.get(Job, spec.job_id)
        if model is None:
            status = source.status if source else "missing"
            return _fail(job_id, owner, f"job {spec.job_id} has no finished model "
                                        f"(it is {status})")
        model_id, checkpoint = model.id, model.artifacts["checkpoint"]
        dataset = spec.dataset or model.dataset
        data_dir = spec.data_dir or (source.config.get("data_dir") if spec.dataset in
                                     (None, model.dataset) else None)
    try:
        result = evaluate(spec.protocol, dataset, checkpoint_path=checkpoint, data_dir=data_dir,
                          train_limit=spec.train_limit, test_limit=spec.test_limit, k=spec.k,
                          temperature=spec.temperature, steps=spec.steps)
    except Exception as exc:  # the job must end failed, never stay running
        return _fail(job_id, owner, f"{type(exc).__name__}: {exc}")

    def register() -> None:
        with session_scope() as s:
            if jobs.finish(s, job_id, owner, "succeeded", result=result):
                s.add(Evaluation(model_id=model_id, job_id=job_id, protocol=spec.protocol,
                                 dataset=dataset, top1=result["top1"], top5=result["top5"],
                                 result=result))
    retrying(register)


@app.task(name="mec.deploy")
def deploy_job(job_id: int) -> None:
    """Deploy or undeploy a model with TorchServe."""
    _execute(job_id, run_deploy)


def run_deploy(job_id: int, owner: str) -> None:
    from worker import deploy

    settings = get_settings()
    with session_scope() as s:
        config = dict(s.get(Job, job_id).config)
        model = s.get(Model, config.pop("model_id"))
        action = config.pop("action")
        model_id, checkpoint, previous = model.id, model.artifacts["checkpoint"], model.deployment
    try:
        if action == "deploy":
            record = deploy.deploy(settings, model_id, checkpoint, previous,
                                   DeploySpec(**config))
        else:
            record = deploy.undeploy(settings, model_id, previous)
    except Exception as exc:  # the job must end failed, never stay running
        return _fail(job_id, owner, f"{type(exc).__name__}: {exc}")

    def register() -> None:
        with session_scope() as s:
            if jobs.finish(s, job_id, owner, "succeeded", result=record):
                s.execute(update(Model).where(Model.id == model_id).values(deployment=record))
    retrying(register)
