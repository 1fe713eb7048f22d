"""Each job's own log lines (table job_logs): appended in batches by the worker that runs
the job, read by the API after a cursor (the last line id a reader has seen). A job keeps
its newest `Settings.job_log_lines` lines (10,000 by default), each cut to `LINE_CHARS`
characters: a job that prints without end cannot fill the database, and the end of its
log, where a traceback is, stays."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from mec_platform.settings import get_settings
from mec_platform.tables import LogLine

LINE_CHARS = 2000


def append(session: Session, job_id: int, attempt: int,
           lines: Iterable[tuple[datetime, str, str]]) -> None:
    """Add (time, source, text) lines of one attempt, then drop the job's oldest lines
    beyond the bound. The caller commits."""
    rows = [{"job_id": job_id, "attempt": attempt, "time": at, "source": source[:32],
             "line": text[:LINE_CHARS]} for at, source, text in lines]
    if not rows:
        return
    session.execute(insert(LogLine), rows)
    oldest_kept = select(LogLine.id).where(LogLine.job_id == job_id).order_by(
        LogLine.id.desc()).offset(get_settings().job_log_lines - 1).limit(1).scalar_subquery()
    session.execute(delete(LogLine).where(LogLine.job_id == job_id, LogLine.id < oldest_kept))


def read(session: Session, job_id: int, since: int = 0, attempt: int | None = None,
         limit: int = 1000) -> list[LogLine]:
    """The job's lines after line id `since`, oldest first, at most `limit`."""
    query = select(LogLine).where(LogLine.job_id == job_id, LogLine.id > since)
    if attempt is not None:
        query = query.where(LogLine.attempt == attempt)
    return list(session.scalars(query.order_by(LogLine.id).limit(limit)))
