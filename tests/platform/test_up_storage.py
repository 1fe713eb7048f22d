"""`mec up --storage-url`: the stack's processes keep datasets in the given S3 store (its
bucket created when missing); a URL that is no store is refused before anything starts."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile

import httpx
import numpy as np
from PIL import Image

from serving.torchserve import unused_ports


def mec(env, *args, check=True):
    done = subprocess.run([sys.executable, "-m", "mec_client", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert not check or done.returncode == 0, done.stdout + done.stderr
    return done


def test_up_refuses_a_storage_url_that_is_no_store(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEC_")}
    done = mec(env, "up", "--data-dir", str(tmp_path), "--storage-url", "ftp://x/y",
               check=False)
    assert done.returncode == 2 and "--storage-url" in done.stderr
    assert "file:///path or s3://bucket/prefix" in done.stderr
    assert not (tmp_path / "run").exists()  # nothing started


def test_up_keeps_datasets_in_the_s3_store_it_is_given(tmp_path, s3_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEC_")} | s3_server.env
    ports = unused_ports(5)
    data = tmp_path / "stack"
    started = mec(env, "up", "--data-dir", str(data), "--storage-url", "s3://up-test/platform",
                  *[f"--{what}-port={port}" for what, port in
                    zip(("api", "inference", "management", "metrics", "worker-metrics"),
                        ports)])
    try:
        assert f"export MEC_DATA_DIR={data.resolve()}" in started.stdout
        key = mec(env | {"MEC_DATA_DIR": str(data)}, "keys", "create", "--name", "t"
                  ).stdout.strip()
        api = httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}", timeout=60,
                           headers={"Authorization": f"Bearer {key}"})
        assert api.post("/v1/datasets", json={"name": "d"}).status_code == 201
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for i in range(4):
                png = io.BytesIO()
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(png, "PNG")
                info = tarfile.TarInfo(f"c{i % 2}/{i}.png")
                info.size = png.tell()
                png.seek(0)
                tar.addfile(info, png)
        made = api.post("/v1/datasets/d/versions", content=buffer.getvalue(),
                        headers={"Content-Type": "application/x-tar"})
        assert made.status_code == 201, made.text
        stored = s3_server.s3().list_objects_v2(Bucket="up-test", Prefix="platform/datasets/")
        assert [o["Key"].rsplit("/", 1)[-1] for o in stored["Contents"]] == [
            f"{made.json()['digest'][:16]}.tar"]
        assert not (data / "artifacts" / "store").exists()  # not the default folder
    finally:
        mec(env, "down", "--data-dir", str(data), check=False)
    again = mec(env, "down", "--data-dir", str(data)).stdout
    assert f"nothing was running from {data.resolve()}" in again
