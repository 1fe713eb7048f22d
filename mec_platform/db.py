"""Engine and sessions. SQLite gets WAL and a busy timeout so the API and the workers,
separate processes, can write to one file."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from mec_platform.settings import get_settings

# At most REQUEST_SESSIONS requests of one API process hold a session (the others wait,
# holding neither a thread nor a connection), fewer than the pool's connections: a request
# holding a connection while it waits for a thread to finish its response can then never
# starve the threads that wait for a connection.
REQUEST_SESSIONS = 40
POOL = {"pool_size": 10, "max_overflow": 40}


def make_sqlite_folder(url: str) -> None:
    """Create the folder of an embedded SQLite file (the database's, or the broker's with
    its `sqla+` prefix); it may be new. Other URLs need nothing."""
    url = url.removeprefix("sqla+")
    if not url.startswith("sqlite"):
        return
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        make_sqlite_folder(url)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               **POOL)

        database = make_url(url).database

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):
            if database and database != ":memory:":
                # the file holds API key hashes: the owner's only (its -wal and -shm
                # files, made next, take the same mode)
                os.chmod(database, 0o600)
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **POOL)


@lru_cache
def engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def _factory() -> sessionmaker[Session]:
    return sessionmaker(engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = _factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


async def get_session() -> AsyncIterator[Session]:
    """FastAPI dependency: one session per request (see REQUEST_SESSIONS)."""
    session = _factory()()
    try:
        yield session
    finally:
        session.close()


def end_read(session: Session) -> None:
    """End the session's read-only transaction (a commit with nothing to write), giving its
    connection back to the pool; loaded objects stay usable. Dependencies call it before
    the request waits for the endpoint."""
    session.commit()


def retrying(fn, attempts: int = 8, first_wait: float = 0.5):
    """Call fn(), retrying on connection errors with exponential backoff (about 1 minute
    in all), so that a database restart does not fail a training run."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    wait = first_wait
    for attempt in range(attempts):
        try:
            return fn()
        except (OperationalError, DBAPIError) as exc:
            transient = isinstance(exc, OperationalError) or exc.connection_invalidated
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(wait)
            wait = min(wait * 2, 15.0)
