"""A large add of items to a gallery, as a job: the items staged by the API (one JSON
object per line) are embedded and written a chunk at a time, each chunk in one
transaction with the job's progress (`step` = items done; counts in `last_metrics`, and
the failures listed in `result` as it goes). A resumed job starts after the last chunk
written; items whose image the model cannot read are skipped and listed."""

from __future__ import annotations

import json
from itertools import islice

from sqlalchemy import select, update

from mec_platform import galleries, storage
from mec_platform.db import retrying, session_scope
from mec_platform.jobs import JobStatus
from mec_platform.tables import Gallery, Job
from serving.client import TorchServe
from worker.process import shutting_down

CHUNK = 256  # items per transaction
LISTED_FAILURES = 100  # failed items named in the result; all are counted


class GalleryGone(RuntimeError):
    """The gallery was deleted, or its model moved to another version, during the add."""


def run_add(job_id: int, owner: str) -> tuple[JobStatus, dict | None] | None:
    """How the job ends (status, result), or None if it was taken from this owner.
    Raises GalleryGone when it cannot go on."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        config, done, progress = job.config, job.step, job.result or {}
        s.execute(update(Job).where(Job.id == job_id).values(total_steps=config["count"]))
    client = galleries.embed_client()
    progress = {"added": 0, "failures": 0, "failed": []} | progress
    with storage.local_file(config["items"]).open() as lines:
        for _ in islice(lines, done):  # written by the attempts before this one
            pass
        while chunk := [json.loads(line) for line in islice(lines, CHUNK)]:
            state = _state(job_id, owner)
            if state != "go":
                return state
            progress = _write(config, chunk, job_id, owner, done, progress, client)
            if progress is None:
                return None
            done += len(chunk)
    return JobStatus.SUCCEEDED, progress


def _state(job_id: int, owner: str):
    """'go', or how the job ends here: cancelled, handed back at a shutdown, or None
    when another owner has it."""
    with session_scope() as s:
        cancel, lease_owner = s.execute(select(Job.cancel_requested, Job.lease_owner)
                                        .where(Job.id == job_id)).one()
    if lease_owner != owner:
        return None
    if cancel:
        return JobStatus.CANCELLED, None
    if shutting_down.is_set():
        return JobStatus.QUEUED, None
    return "go"


def _write(config: dict, chunk: list[dict], job_id: int, owner: str, done: int,
           progress: dict, client: TorchServe) -> dict | None:
    """Embed and upsert one chunk, and move the job's progress past it, in one
    transaction. Returns the new progress, or None if the job is no longer ours."""
    gallery_id = config["gallery_id"]
    dim, endpoint = retrying(lambda: _read_bound(config))
    kept, vectors, bad = galleries.vectors_of(chunk, dim, client, endpoint)
    failed = [{"id": chunk[p]["id"], "error": why} for p, why in sorted(bad.items())]
    after = {"added": progress["added"] + len(kept),
             "failures": progress["failures"] + len(bad),
             "failed": (progress["failed"] + failed)[:LISTED_FAILURES]}

    def write() -> dict | None:
        with session_scope() as s:
            _bound(s, config)  # not redeployed while the chunk was embedded
            if kept:
                galleries.upsert(s, gallery_id, [chunk[p] for p in kept], vectors)
            mine = s.execute(update(Job).where(Job.id == job_id, Job.lease_owner == owner)
                             .values(step=done + len(chunk), result=after, last_metrics={
                                 "added": after["added"], "failures": after["failures"]})
                             ).rowcount
            if not mine:
                s.rollback()
                return None
            return after
    return retrying(write)


def _read_bound(config: dict) -> tuple[int, str | None]:
    with session_scope() as s:
        return _bound(s, config)


def _bound(s, config: dict) -> tuple[int, str | None]:
    """(dim, the endpoint that embeds its images or None), while the gallery the job was
    made for exists and its model serves the gallery's version."""
    gallery = s.get(Gallery, config["gallery_id"])
    if not galleries.is_bound(gallery, config):
        raise GalleryGone(f"gallery {config['gallery']!r} was deleted (or deleted and "
                          "created again) after this import was submitted; none of its "
                          "items went into another gallery")
    try:
        return gallery.dim, galleries.endpoint(s, gallery)
    except galleries.OtherVersion as exc:
        raise GalleryGone(str(exc)) from None
