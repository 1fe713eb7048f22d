"""A full disk and an unwritable artifact root, with real worker processes: the artifact
root is a small tmpfs that the test mounts (root only), filled while a job trains, or
mounted read-only before a worker starts."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import base_env, open_platform
from test_jobs import pretrain

from mec_core import checkpoint


def _mount(target: Path, *options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs",
                           str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    _mount(disk, "size=64m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> None:
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_disk_full_at_a_checkpoint__job_fails_with_the_reason_last_checkpoint_loads(
        tmp_path, small_disk):
    env = base_env(tmp_path) | {"MEC_ARTIFACT_ROOT": str(small_disk)}
    plat = open_platform(tmp_path, env, "embedded")
    try:
        plat.start_api()
        plat.start_worker("w1")
        job = pretrain(plat, 5000, log_every=1, checkpoint_every=2)
        folder = small_disk / "store" / "jobs" / str(job["id"]) / "checkpoints"
        plat.wait_for(lambda: checkpoint.latest(folder), 120, "a first checkpoint")
        _fill(small_disk)
        done = plat.wait_status(job["id"], ("succeeded", "failed"), timeout=120)
        assert done["status"] == "failed" and done["attempts"] == 1
        # whichever write of the job met the full disk first (a checkpoint, or the metrics
        # appended at every step) names its file
        named = re.search(r"No space left on device \(writing (.+)\)", done["error"])
        assert named, done["error"]
        assert Path(named[1]) == folder.parent / "metrics.jsonl" or (
            Path(named[1]).parent == folder and checkpoint.PATTERN.match(Path(named[1]).name))
        last = checkpoint.latest(folder)
        state = checkpoint.load(last)  # the last complete checkpoint is intact
        assert state["step"] >= 2 and state["format"] == checkpoint.FORMAT
        assert not list(folder.glob(".*.tmp"))  # the failed write left nothing behind
        assert plat.workers["w1"].poll() is None  # the worker lives on
    finally:
        plat.stop()


def test_unwritable_artifact_root__the_worker_refuses_to_start_and_says_why(tmp_path):
    readonly = tmp_path / "readonly"
    _mount(readonly, "size=1m", "ro")
    try:
        env = base_env(tmp_path) | {"MEC_ARTIFACT_ROOT": str(readonly), "MEC_WORKER_NAME": "w"}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.main", "worker",
                               "--pool", "solo", "--loglevel", "INFO"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and time.monotonic() - started < 60
        assert f"the artifact root {readonly} is not writable (Read-only file system)" in \
            done.stderr, done.stderr[-2000:]
    finally:
        subprocess.run(["umount", "-l", str(readonly)], check=False)
