"""Where the API streams what a request uploads (a dataset archive, a checkpoint, an import's
NDJSON items) before it is checked and kept in the store: a folder of each upload's own on
this host's disk (data_dir/staging), held while the upload lives and removed after it.
An API process killed mid-upload leaves its folder unheld, and the next sweep (at the
API's start and before each upload) removes it, on whatever store the platform uses."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mec_platform.settings import get_settings


def staging_root() -> Path:
    """Where this host's uploads are streamed to and checked: on the API's own disk."""
    root = get_settings().data_dir / "staging"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def staging() -> Iterator[Path]:
    """A folder of one upload's own, locked (flock) while the upload lives and removed
    after it."""
    remove_stale_staging()
    while True:
        folder = Path(tempfile.mkdtemp(prefix="upload-", dir=staging_root()))
        try:
            fd = os.open(folder, os.O_RDONLY)
        except FileNotFoundError:
            continue  # swept by another process before it was locked
        fcntl.flock(fd, fcntl.LOCK_EX)
        if folder.is_dir():
            break
        os.close(fd)  # swept while this one waited for the lock
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def remove_stale_staging() -> list[Path]:
    """Remove the upload folders that no living process holds (those of an API process
    killed while it streamed or checked an upload); the removed ones."""
    removed = []
    for folder in staging_root().iterdir():  # each an upload's (or an older release's)
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue  # removed meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        except BlockingIOError:
            pass  # an upload under way
        finally:
            os.close(fd)
    return removed
