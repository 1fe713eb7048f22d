"""The API's words and shared numbers: job statuses, kinds and queues, and the size of a
gallery add answered at once. Plain enums, no pydantic: importing them costs nothing."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobKind(StrEnum):
    """What a job does; each kind is a worker task named `mec.<kind>`."""

    PRETRAIN = "pretrain"
    EVALUATE = "evaluate"
    DEPLOY = "deploy"
    IMPORT = "import"
    GALLERY = "gallery"  # a large add of items to a gallery
    SWEEP = "sweep"  # pretraining trials over a search space (worker.sweeps)


class Queue(StrEnum):
    """Worker queues: GPU jobs (pretraining) and CPU jobs (evaluation, import, deploy)."""

    GPU = "gpu"
    CPU = "cpu"


# A gallery add of up to this many images is embedded before the API answers (as in one
# /embed request); a larger one is an import job, which the client streams as NDJSON.
SYNC_IMAGES = 64
