"""A job's files and the store: where the job writes them on this host (`folder`), each
checkpoint stored as it is written, in a thread of its own so that the steps after it do
not wait for the upload (`CheckpointUploads`), the newest stored checkpoint brought back on
whichever host resumes the job (`fetch_newest`; `fetch_stored` for the hosts of one run),
and the model's artifacts stored when the job ends (`keep_artifacts`). On a file:// store
the job writes in the store's own folder and nothing is copied."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from mec_core.checkpoint import latest
from mec_platform import storage
from mec_platform.settings import get_settings

log = logging.getLogger(__name__)


def folder(job_id: int) -> Path:
    """Where job `job_id` writes its checkpoints and exports on this host."""
    return storage.work_folder(f"jobs/{job_id}")


def _key(job_id: int, path: Path) -> str:
    return f"jobs/{job_id}/{path.relative_to(folder(job_id)).as_posix()}"


class CheckpointUploads:
    """Stores the checkpoints a run writes, newest first: one upload at a time, a newer
    checkpoint replacing one still waiting; `on_stored(reference)` once a checkpoint is
    whole in the store, then the stored ones beyond the newest `keep` are removed. A
    failed upload is logged and the next checkpoint tried; `close()` waits for the last."""

    def __init__(self, job_id: int, on_stored: Callable[[str], None], keep: int = 3) -> None:
        self.job_id, self.on_stored, self.keep = job_id, on_stored, keep
        self.in_place = storage.get_store().folder(f"jobs/{job_id}") is not None
        self.pending: Path | None = None
        self.busy = self.closed = False
        self.changed = threading.Condition()
        self.thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        if self.in_place:
            self.on_stored(str(path))
            return
        with self.changed:
            self.pending = path
            self.changed.notify_all()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, daemon=True,
                                           name=f"checkpoints-{self.job_id}")
            self.thread.start()

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.pending is None and not self.busy)
        if self.thread is not None:
            self.thread.join()

    def _run(self) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.pending is not None or self.closed)
                if self.pending is None:
                    return
                path, self.pending, self.busy = self.pending, None, True
            try:
                self._store(path)
            except FileNotFoundError:  # already pruned on this host by newer ones
                pass
            except Exception as exc:  # the store is down: the next checkpoint tries again
                log.warning("job %s: checkpoint %s not stored: %s", self.job_id, path.name,
                            exc)
            finally:
                with self.changed:
                    self.busy = False
                    self.changed.notify_all()

    def _store(self, path: Path) -> None:
        store, key = storage.get_store(), _key(self.job_id, path)
        self.on_stored(storage.keep(path, key))
        stored = store.keys(key.rpartition("/")[0])
        for old in stored[:-self.keep]:
            store.delete(old)


def fetch_newest(job_id: int) -> Path | None:
    """The newest checkpoint of the job on this host, downloaded from the store first when
    the store holds a newer one (a job resumed on another host than the one that wrote
    it)."""
    here, store = folder(job_id) / "checkpoints", storage.get_store()
    newest = latest(here)
    if store.folder(f"jobs/{job_id}") is not None:
        return newest or _from_before_the_store(job_id, here)
    stored = store.keys(f"jobs/{job_id}/checkpoints")
    if not stored:
        return newest
    name = stored[-1].rpartition("/")[2]
    if newest is not None and newest.name >= name:  # step_XXXXXXXX.pt: sorted by step
        return newest
    here.mkdir(parents=True, exist_ok=True)
    partial = here / f".{name}.{uuid.uuid4().hex}.download"
    try:
        store.get(stored[-1], partial)
        os.replace(partial, here / name)
    finally:
        partial.unlink(missing_ok=True)
    log.info("job %s: resuming from %s, brought from the store", job_id, store.url(stored[-1]))
    return here / name


def fetch_stored(job_id: int) -> Path | None:
    """The newest checkpoint the store holds, on this host, and none newer beside it: the
    ranks of a run on several hosts all resume from it, whereas a newer one written here
    but not yet stored would set this host's ranks apart from the others."""
    store = storage.get_store()
    if store.folder(f"jobs/{job_id}") is None:
        stored = store.keys(f"jobs/{job_id}/checkpoints")
        name = stored[-1].rpartition("/")[2] if stored else ""
        for unstored in (folder(job_id) / "checkpoints").glob("step_*.pt"):
            if unstored.name > name:
                unstored.unlink(missing_ok=True)
    return fetch_newest(job_id)


def _from_before_the_store(job_id: int, here: Path) -> Path | None:
    """A job that ran before the file:// store (its checkpoints in artifact_root/jobs/<id>,
    not in the store's folder) resumes from its newest one, copied into the store's."""
    newest = latest(get_settings().artifact_root / "jobs" / str(job_id) / "checkpoints")
    if newest is None:
        return None
    here.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(newest, here / newest.name)
    log.info("job %s: resuming from %s, written before the store", job_id, newest)
    return here / newest.name


def keep_artifacts(job_id: int, files: dict[str, Path]) -> dict[str, str]:
    """Store the model's files (written under `folder(job_id)`); {name: reference}. A
    checkpoint the uploads stored already is not sent again."""
    store, refs = storage.get_store(), {}
    for name, path in files.items():
        key = _key(job_id, path)
        refs[name] = store.ref(key) if store.stat(key) is not None else storage.keep(path, key)
    return refs


def clear(job_id: int, under: str = "") -> None:
    """Remove the job's files (those `under` a sub-folder) from this host once they are
    stored (not on a file:// store: there they are the stored ones)."""
    if storage.get_store().folder(f"jobs/{job_id}") is None:
        shutil.rmtree(folder(job_id) / under, ignore_errors=True)
