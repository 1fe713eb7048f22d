"""Real processes for integration tests: the API under uvicorn and Celery workers, on the
embedded defaults (SQLite + SQLite broker) and on production parts (PostgreSQL + Redis)."""

from __future__ import annotations

import pytest
from harness import _drop_database, _postgres_database, full_platform


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    name = _postgres_database()
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    _drop_database(name)


@pytest.fixture(params=["embedded", "postgres+redis"], scope="session")
def shared_platform(request, tmp_path_factory):
    """One platform per backend for the whole run (starting one takes ~20 s)."""
    with full_platform(tmp_path_factory.mktemp(request.param.replace("+", "_")),
                       request.param) as plat:
        yield plat


@pytest.fixture(scope="module")
def platform(shared_platform):
    """The shared platform with a key of this module's own (rate limits are per key)."""
    shared_platform.key = shared_platform.new_key("tests")
    shared_platform.client.headers["Authorization"] = f"Bearer {shared_platform.key}"
    return shared_platform
