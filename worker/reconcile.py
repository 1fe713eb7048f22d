"""The database says what to run; the broker only rings the bell. A broker can lose its
bells (Redis restarted without persistence, a flushed database): then queued jobs would
wait forever. The reconciler finds queued jobs whose message the broker no longer holds
and rings again. Ringing twice is harmless: only one claim of a job wins
(mec_platform.jobs.claim).
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from functools import lru_cache

import redis
from celery.utils.log import get_logger
from sqlalchemy import Engine, create_engine, select, text, update

from mec_platform.db import session_scope
from mec_platform.jobs import JobStatus, enqueue_again
from mec_platform.queue import Queue
from mec_platform.settings import get_settings
from mec_platform.tables import Job, utcnow

log = get_logger(__name__)


def _job_id(message: dict) -> int | None:
    """The job id a Celery message carries (its first positional argument)."""
    try:
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _redis_messages(url: str) -> list[dict]:
    client = redis.Redis.from_url(url)
    try:
        messages = []
        for queue in Queue:  # the priority strategy keeps one list per priority step
            for key in [queue.encode(), *client.scan_iter(match=f"{queue}\x06\x16*")]:
                messages += [json.loads(m) for m in client.lrange(key, 0, -1)]
        # not the delivered, unacknowledged ones ("unacked"): a queued job's message there
        # went to a worker that died before its claim, and Redis gives it back only after
        # the visibility timeout (12 h)
        return messages
    finally:
        client.close()


@lru_cache
def _sqla_engine(url: str) -> Engine:
    """One engine per broker URL for the life of the worker, not one per reconciliation."""
    return create_engine(url.removeprefix("sqla+"))


def _sqla_messages(url: str) -> list[dict]:
    with _sqla_engine(url).connect() as conn:
        if "kombu_message" not in conn.dialect.get_table_names(conn):
            return []
        return [json.loads(p) for p in conn.scalars(
            text("SELECT payload FROM kombu_message WHERE visible"))]


def held_job_ids(url: str) -> set[int] | None:
    """Ids of the jobs the broker holds a waiting message for; None when this kind of
    broker cannot be inspected."""
    if url.startswith(("redis://", "rediss://")):
        messages = _redis_messages(url)
    elif url.startswith("sqla+"):
        messages = _sqla_messages(url)
    else:
        return None
    return {i for i in map(_job_id, messages) if i is not None}


def reconcile_once() -> list[int]:
    """Re-enqueue queued jobs, enqueued more than `reconcile_grace_seconds` ago, that the
    broker does not hold. Returns their ids."""
    settings = get_settings()
    held = held_job_ids(settings.broker_url)
    if held is None:
        return []
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.reconcile_grace_seconds)
    with session_scope() as s:
        lost = s.execute(select(Job.id, Job.enqueued_at).where(
            Job.status == JobStatus.QUEUED, Job.enqueued_at < cutoff)).all()
    rung = []
    for job_id, enqueued_at in lost:
        if job_id in held:
            continue
        with session_scope() as s:  # one reconciler wins per job, whoever else runs one
            won = s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED,
                                              Job.enqueued_at == enqueued_at)
                            .values(enqueued_at=now)).rowcount
        if won:
            log.warning("job %s: queued but the broker had no message for it; re-enqueued",
                        job_id)
            rung.append(job_id)
    with session_scope() as s:
        enqueue_again(s, rung)
    return rung
