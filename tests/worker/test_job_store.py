"""A job's checkpoints in the store (worker/job_store.py) on a file:// store and on a real
S3 server (SeaweedFS): stored as they are written, the newest three kept, the job told
only once one is whole, and brought back on a host that resumes the job."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mec_platform.storage import FileStore


def _write(job_id: int, step: int) -> Path:
    from worker import job_store

    path = job_store.folder(job_id) / "checkpoints" / f"step_{step:08d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"state at {step}".encode())
    return path


def test_checkpoints_are_stored_newest_kept_and_brought_back_where_the_job_resumes(
        platform_store, tmp_path):
    import shutil

    from mec_platform.settings import get_settings
    from worker import job_store

    stored = []
    uploads = job_store.CheckpointUploads(7, stored.append)
    for step in (4, 8, 12, 16):  # one at a time, as a run's steps space them
        uploads.add(_write(7, step))
        deadline = time.monotonic() + 30
        while not stored or not stored[-1].endswith(f"step_{step:08d}.pt"):
            assert time.monotonic() < deadline, stored
            time.sleep(0.05)
    for step in (20, 24, 28):  # faster than they upload: the newest waiting one goes
        uploads.add(_write(7, step))
    uploads.close()  # waits for the last
    newest = "jobs/7/checkpoints/step_00000028.pt"
    assert stored[-1] == platform_store.ref(newest)
    if isinstance(platform_store, FileStore):  # written in place: nothing copied
        assert stored == [str(job_store.folder(7) / "checkpoints" / f"step_{s:08d}.pt")
                          for s in (4, 8, 12, 16, 20, 24, 28)]
        assert job_store.fetch_newest(7).name == "step_00000028.pt"
        # a job queued mid-run across the upgrade to the store: its checkpoints where jobs
        # wrote them before, outside the store's folder
        before = get_settings().artifact_root / "jobs" / "9" / "checkpoints"
        before.mkdir(parents=True)
        (before / "step_00000040.pt").write_bytes(b"state at 40")
        (before / "step_00000020.pt").write_bytes(b"state at 20")
        assert job_store.fetch_newest(9).read_bytes() == b"state at 40"
        assert job_store.fetch_newest(9) == job_store.folder(9) / "checkpoints" / \
            "step_00000040.pt"
        return
    kept = platform_store.keys("jobs/7/checkpoints")
    assert len(kept) == 3 and kept[-1] == newest and kept[0] >= "jobs/7/checkpoints/step_00000012"
    shutil.rmtree(job_store.folder(7))  # another host: nothing of the job on its disk
    brought = job_store.fetch_newest(7)
    assert brought == job_store.folder(7) / "checkpoints" / "step_00000028.pt"
    assert brought.read_bytes() == b"state at 28"
    assert job_store.fetch_newest(8) is None  # a job that never stored one


@pytest.mark.parametrize("store", ["s3"], indirect=True)  # a file:// store uploads nothing
def test_an_upload_that_fails_is_skipped_and_the_next_checkpoint_stored(platform_store):
    from worker import job_store

    stored = []
    uploads = job_store.CheckpointUploads(9, stored.append)
    missing = job_store.folder(9) / "checkpoints" / "step_00000004.pt"  # pruned meanwhile
    uploads.add(missing)
    uploads.add(_write(9, 8))
    uploads.close()
    assert stored == [platform_store.ref("jobs/9/checkpoints/step_00000008.pt")]


def test_the_ranks_of_one_run_resume_from_the_newest_stored_checkpoint(platform_store):
    """A newer checkpoint that only this host wrote (not yet stored when the run failed)
    is dropped on an S3 store, so that every host's ranks start at the same step; on a
    file:// store every host sees the one folder, and the newest is the stored one."""
    from worker import job_store

    uploads = job_store.CheckpointUploads(5, lambda ref: None)
    uploads.add(_write(5, 10))
    uploads.close()
    unstored = _write(5, 20)  # the run failed before this one went
    here = job_store.fetch_stored(5)
    if isinstance(platform_store, FileStore):
        assert here == unstored
        return
    assert here == job_store.folder(5) / "checkpoints" / "step_00000010.pt"
    assert not unstored.exists() and here.read_bytes() == b"state at 10"
    assert job_store.fetch_stored(6) is None  # a run that stored none starts from step 0
