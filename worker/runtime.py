"""The worker's own life: register itself, heartbeat, and reap jobs of dead workers."""

from __future__ import annotations

import os
import socket
import threading

from celery.signals import worker_init, worker_ready, worker_shutdown, worker_shutting_down
from celery.utils.log import get_logger
from sqlalchemy import delete, update

from mec_platform import jobs
from mec_platform.db import session_scope
from mec_platform.queue import Queue
from mec_platform.settings import get_settings
from mec_platform.tables import Worker, utcnow
from serving.client import Unavailable
from worker import deploy, prometheus
from worker.device import describe_device, process_capacity
from worker.process import shutting_down, worker_name
from worker.reconcile import reconcile_once
from worker.tasks import advance_sweeps

log = get_logger(__name__)
_stop = threading.Event()


def reap_once() -> list[int]:
    """Re-queue (or fail, past max_attempts) jobs whose lease expired, and ring the bell
    for the re-queued ones; they resume from their last checkpoint."""
    with session_scope() as s:
        requeued = jobs.reap(s, get_settings().max_attempts)  # committed
        jobs.enqueue_again(s, requeued)
    for job_id in requeued:
        log.warning("job %s: lease expired, re-queued to resume from its checkpoint", job_id)
    return requeued


def _loop() -> None:
    settings = get_settings()
    name = worker_name()
    since_reap = float("inf")
    while not _stop.wait(settings.heartbeat_seconds):
        try:
            with session_scope() as s:
                s.execute(update(Worker).where(Worker.name == name).values(seen_at=utcnow()))
            since_reap += settings.heartbeat_seconds
            if since_reap >= settings.reaper_seconds:
                since_reap = 0.0
                reap_once()
                reconcile_once()
                advance_sweeps()
                restore_deployments()
        except Exception as exc:  # keep beating through a database outage
            log.warning("heartbeat failed: %s", exc)


def restore_deployments() -> None:
    """Register again the deployments a restarted TorchServe lost; TorchServe being down
    (or still starting) only delays that to the next heartbeat."""
    try:
        deploy.restore()
    except (Unavailable, ValueError) as exc:  # down, or a half-written answer
        log.warning("deployments not restored yet: TorchServe %s", exc)


def check_artifact_root() -> None:
    """Refuse to start on an artifact root this process cannot write: every job would
    otherwise fail, one after the other, at its first checkpoint."""
    root = get_settings().artifact_root
    probe = root / f".mec-write-test-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise SystemExit(f"mec worker: cannot start: the artifact root {root} is not "
                         f"writable ({exc.strerror}); give MEC_ARTIFACT_ROOT a writable "
                         "directory") from None


@worker_init.connect
def _on_init(**_kw) -> None:
    check_artifact_root()


@worker_ready.connect
def _on_ready(sender, **_kw) -> None:
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values()) \
        if sender.app.amqp.queues.consume_from else sorted(Queue)
    with session_scope() as s:
        s.merge(Worker(name=worker_name(), host=socket.gethostname(), queues=queues,
                       device=describe_device(), processes=process_capacity(),
                       current_job=None, started_at=utcnow(),
                       seen_at=utcnow()))
    reap_once()
    reconcile_once()
    restore_deployments()
    threading.Thread(target=_loop, name="mec-heartbeat", daemon=True).start()
    _serve_metrics(queues)


def _serve_metrics(queues: list[str]) -> None:
    """This worker's Prometheus endpoint, if MEC_WORKER_METRICS_PORT is set; a port that
    is taken costs the metrics, never the jobs."""
    settings = get_settings()
    if settings.worker_metrics_port is None:
        return
    try:
        port = prometheus.serve(settings.worker_metrics_port, settings.worker_metrics_host,
                                worker_name(), queues, describe_device())
    except OSError as exc:
        log.warning("metrics endpoint not started on %s:%s: %s", settings.worker_metrics_host,
                    settings.worker_metrics_port, exc)
        return
    log.info("metrics on http://%s:%s/metrics", settings.worker_metrics_host, port)


@worker_shutting_down.connect
def _on_shutting_down(**_kw) -> None:
    """A warm shutdown (SIGTERM, e.g. a deploy): the training loop checkpoints within a
    step and the job goes back to the queue, to resume on another worker."""
    shutting_down.set()


@worker_shutdown.connect
def _on_shutdown(**_kw) -> None:
    _stop.set()
    with session_scope() as s:
        s.execute(delete(Worker).where(Worker.name == worker_name()))
