"""What a dataset in the store costs next to the same images on local disk, in one run:

1. upload: an archive of `--megabytes` of PNGs sent to the API (streamed to disk, every
   member checked and decoded, arranged, put in an S3 store: SeaweedFS on this machine),
   against copying the archive to a local folder and unpacking it;
2. first epoch ready: a worker's first read of the version (download into its cache,
   unpack, load the image folder) against loading the same folder from local disk.

    python bench/bench_datasets.py --megabytes 1024 --json > docs/performance/datasets/…json
    python bench/bench_datasets.py --report docs/performance/datasets/*.json
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from records import add_options, emit, host, reported
from s3_server import S3Server

SIDE = 128  # noise PNGs of 128 x 128 RGB: about 49 KB each, incompressible


def make_archive(path: Path, megabytes: int, classes: int = 10) -> int:
    """A tar of class folders of noise PNGs adding up to `megabytes`; its image count."""
    rng = np.random.default_rng(0)
    count, total = 0, 0
    with tarfile.open(path, "w") as tar:
        while total < megabytes << 20:
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(
                buffer, format="PNG", compress_level=1)
            info = tarfile.TarInfo(f"images/c{count % classes}/{count}.png")
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)
            count, total = count + 1, total + info.size
    return count


def run(megabytes: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="mec-bench-datasets-"))
    server = S3Server(root / "seaweedfs")
    try:
        archive = root / "images.tar"
        images = make_archive(archive, megabytes)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEC_")} | \
            server.env | {"MEC_DATA_DIR": str(root / "api"),
                          "MEC_STORAGE_URL": f"s3://{server.bucket('bench')}/p",
                          "MEC_MAX_DATASET_MB": str(4 * megabytes)}
        os.environ.update(env)  # this process reads the version as a worker would
        script = (
            "import sys, time\n"
            "from mec_platform.migrate import upgrade\n"
            "from mec_platform.settings import get_settings\n"
            "from mec_platform import datasets\n"
            "from mec_platform.db import session_scope\n"
            "from mec_platform.tables import Dataset\n"
            "upgrade(get_settings().database_url)\n"
            "with session_scope() as s:\n"
            "    d = Dataset(project='default', name='bench'); s.add(d); s.flush()\n"
            "    t = time.perf_counter()\n"
            "    digest = datasets.digest_of(__import__('pathlib').Path(sys.argv[1]))\n"
            "    datasets.add_version(s, d, __import__('pathlib').Path(sys.argv[1]), digest,\n"
            "                         'bench', 0.0, 0)\n"
            "    print(time.perf_counter() - t)\n")
        done = subprocess.run([sys.executable, "-c", script, str(archive)], env=env,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the upload failed: {done.stderr[-3000:]}")
        upload = float(done.stdout)
        local = root / "local"
        started = time.perf_counter()
        local.mkdir()
        shutil.copyfile(archive, local / "images.tar")
        with tarfile.open(local / "images.tar") as tar:
            tar.extractall(local / "folder", filter="data")
        copy = time.perf_counter() - started

        from mec_core.data import load_dataset
        from mec_platform import datasets
        from mec_platform.db import session_scope

        os.environ["MEC_DATA_DIR"] = str(root / "worker")  # another host's cache
        os.environ["MEC_DATABASE_URL"] = f"sqlite:///{root / 'api' / 'mec.db'}"
        started = time.perf_counter()
        with session_scope() as s:
            folder = datasets.local_folder(s, "default", "dataset://bench/1")
        from_store = load_dataset("imagefolder", "train", str(folder), image_size=SIDE)
        first_store = time.perf_counter() - started
        started = time.perf_counter()
        from_disk = load_dataset("imagefolder", "train", str(local / "folder" / "images"),
                                 image_size=SIDE)
        first_disk = time.perf_counter() - started
        assert len(from_store.labels) == len(from_disk.labels) == images
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)
    return {"bench": "datasets", "when": time.strftime("%Y-%m-%d %H:%M"), "host": host(),
            "megabytes": megabytes, "images": images,
            "upload_seconds": round(upload, 2), "local_copy_seconds": round(copy, 2),
            "first_epoch_store_seconds": round(first_store, 2),
            "first_epoch_local_seconds": round(first_disk, 2)}


def markdown(r: dict) -> str:
    up, copy = r["upload_seconds"], r["local_copy_seconds"]
    store, disk = r["first_epoch_store_seconds"], r["first_epoch_local_seconds"]
    return (f"{r['megabytes']} MB archive, {r['images']} PNGs of {SIDE} px, {r['when']} "
            f"({r['host']['cpu']}, {r['host']['cores']} cores):\n\n"
            "| step | through the store (S3, SeaweedFS) | local disk | ratio |\n|---|---|---|---|\n"
            f"| upload (checked, arranged, stored) vs copy + unpack | {up:.1f} s | {copy:.1f} s "
            f"| {up / copy:.1f} × |\n"
            f"| first epoch ready (download, unpack, load) vs load | {store:.1f} s | "
            f"{disk:.1f} s | {store / disk:.2f} × |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1024)
    add_options(parser)
    args = parser.parse_args()
    if not reported(args, markdown):
        emit(args, run(args.megabytes), markdown)


if __name__ == "__main__":
    main()
