"""The Celery application and the doorbell: enqueue a job id on its queue.

The broker only rings the bell; the database says what to run. Tasks are sent by name
(`mec.<kind>`), so the sender never imports the worker's code; importing this module is
cheap (no torch).
"""

from __future__ import annotations

import kombu
from celery import Celery

from mec_client.enums import Queue
from mec_platform.db import make_sqlite_folder
from mec_platform.settings import get_settings


def make_app() -> Celery:
    settings = get_settings()
    make_sqlite_folder(settings.broker_url)
    app = Celery("mec", broker=settings.broker_url)
    app.conf.update(
        task_queues=[kombu.Queue(q, queue_arguments={"x-max-priority": 10}) for q in Queue],
        task_default_queue=Queue.CPU,
        task_acks_late=True,  # a job's message is acknowledged only after it ran ...
        task_reject_on_worker_lost=True,  # ... and given back if the worker died under it
        worker_prefetch_multiplier=1,  # one long job at a time, nothing reserved behind it
        task_ignore_result=True,  # results live in the database
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings.broker_url,
                                                    settings.visibility_timeout),
        worker_hijack_root_logger=False,
    )
    return app


def _transport_options(url: str, visibility_timeout: int) -> dict:
    if url.startswith(("redis", "rediss")):
        # unacknowledged messages come back only after this long: longer than any job
        return {"visibility_timeout": visibility_timeout, "queue_order_strategy": "priority"}
    if url.startswith("sqla+sqlite"):
        return {"connect_args": {"timeout": 30}}  # the file is shared by many processes
    return {}


app = make_app()


def broker_priority(priority: int, broker_url: str) -> int:
    """A job's priority (9 = most urgent) as the broker reads it: kombu's Redis transport
    pops its lowest priority step first (0 before 9), so there the scale is reversed. The
    embedded SQLite broker delivers in order and ignores it."""
    return 9 - priority if broker_url.startswith(("redis", "rediss")) else priority


def enqueue(job_id: int, kind: str, queue: str, priority: int = 0) -> None:
    """Ring the bell for job `job_id` on task `mec.<kind>`; the task loads everything else
    from the database."""
    app.send_task(f"mec.{kind}", args=[job_id], queue=queue,
                  priority=broker_priority(priority, get_settings().broker_url))


def broker_reachable(timeout: float = 2.0) -> bool:
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:  # kombu raises transport-specific errors
        return False
