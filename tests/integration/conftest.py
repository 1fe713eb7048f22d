"""Real processes for integration tests: the API under uvicorn and Celery workers, on the
embedded defaults (SQLite + SQLite broker) and on production parts (PostgreSQL + Redis)."""

from __future__ import annotations

import pytest
import redis
from harness import (
    REDIS_DB,
    _drop_database,
    _postgres_database,
    base_env,
    open_platform,
)

from serving.torchserve import LocalTorchServe, unused_ports


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    name = _postgres_database()
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    _drop_database(name)


@pytest.fixture(params=["embedded", "postgres+redis"], scope="session")
def shared_platform(request, tmp_path_factory):
    """One platform per backend for the whole run (starting one takes ~20 s)."""
    root = tmp_path_factory.mktemp(request.param.replace("+", "_"))
    env = base_env(root)
    database = None
    if request.param == "postgres+redis":
        database = _postgres_database()
        env["MEC_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
        env["MEC_BROKER_URL"] = f"redis://127.0.0.1:6379/{REDIS_DB}"
        redis.Redis(db=REDIS_DB).flushdb()
    ts_ports = unused_ports(3)
    env |= {"MEC_TORCHSERVE_INFERENCE_URL": f"http://127.0.0.1:{ts_ports[0]}",
            "MEC_TORCHSERVE_MANAGEMENT_URL": f"http://127.0.0.1:{ts_ports[1]}",
            "MEC_TORCHSERVE_HOME": str(root / "torchserve"),
            "MEC_MODEL_STORE": str(root / "model-store")}
    plat = open_platform(root, env, request.param)
    plat.torchserve = LocalTorchServe(root / "torchserve", root / "model-store", *ts_ports)
    try:
        plat.torchserve.start()
        plat.start_api()
        plat.start_worker("w1")
        yield plat
    finally:
        plat.stop()
        plat.torchserve.stop()
        if database:
            _drop_database(database)
            redis.Redis(db=REDIS_DB).flushdb()


@pytest.fixture(scope="module")
def platform(shared_platform):
    """The shared platform with a key of this module's own (rate limits are per key)."""
    shared_platform.key = shared_platform.new_key("tests")
    shared_platform.client.headers["Authorization"] = f"Bearer {shared_platform.key}"
    return shared_platform
