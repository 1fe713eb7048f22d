"""Settings are read once per process: this test process gets a platform data directory
of its own (embedded SQLite database and broker), never ./mec-data. Real-process tests
give their processes their own environment (tests/integration/harness.py).

Fixtures for the in-process tests (routes through FastAPI's TestClient, task functions
called directly) on that embedded platform."""

import os
import tempfile

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
