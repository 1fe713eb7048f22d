"""Capture a job's own log lines while a worker runs it, into mec_platform.joblogs:
every record logged in the thread that runs the job (the task, the trainer, what Celery
redirects from print), tracebacks included, and records logged for the job from other
threads with `extra={"job_id": ID, "source": ...}` (the lines of a multi-process job's
ranks, which worker.multiprocess reads from torchrun). A background thread writes them
in batches, so logging never waits on the database."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from celery.utils.log import get_logger

from mec_platform import joblogs
from mec_platform.db import session_scope
from mec_platform.settings import get_settings

log = get_logger(__name__)
FLUSH_SECONDS = 0.5
# records of task loggers (celery.utils.log.get_task_logger) stop at this logger
_TASK_LOGGER = "celery.task"


class JobLogHandler(logging.Handler):
    """Collects the job's records; `close()` writes what is left."""

    def __init__(self, job_id: int, attempt: int) -> None:
        super().__init__(logging.INFO)
        self.job_id, self.attempt = job_id, attempt
        self.thread = threading.get_ident()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self._pending: list[tuple[datetime, str, str]] = []
        self._lock = threading.Lock()
        self._last: logging.LogRecord | None = None
        self._done = threading.Event()
        self._writer = threading.Thread(target=self._run, name=f"joblog-{job_id}",
                                        daemon=True)

    def emit(self, record: logging.LogRecord) -> None:
        source = getattr(record, "source", None)
        ours = getattr(record, "job_id", None) == self.job_id or (
            source is None and record.thread == self.thread)
        if not ours or record is self._last:  # seen already, from another logger
            return
        self._last = record
        text = record.getMessage() if source else self.format(record)
        at = datetime.fromtimestamp(record.created, UTC)
        with self._lock:
            self._pending.extend((at, source or "worker", line)
                                 for line in text.splitlines() or [""])

    def flush(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
        if not lines:
            return
        try:
            with session_scope() as s:
                joblogs.append(s, self.job_id, self.attempt, lines)
        except Exception as exc:  # the database is down: keep the lines for the next try
            with self._lock:
                self._pending[:0] = lines
                del self._pending[:-get_settings().job_log_lines]
            log.warning("job %s: log lines not written yet: %s", self.job_id, exc)

    def _run(self) -> None:
        while not self._done.wait(FLUSH_SECONDS):
            self.flush()

    def __enter__(self) -> JobLogHandler:
        self._writer.start()
        for name in ("", _TASK_LOGGER):
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in ("", _TASK_LOGGER):
            logging.getLogger(name).removeHandler(self)
        self._done.set()
        self._writer.join()
        self.flush()
