"""What the API answers: the response bodies of the REST API, in one place (its words are in
mec_client.enums). The server builds its answers with these same classes (api.schemas
imports them), so the client and the API cannot drift apart."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mec_client.enums import JobKind, JobStatus, Queue


class Progress(BaseModel):
    step: int
    total_steps: int | None
    epoch: int
    steps_per_epoch: int | None
    percent: float


class Slot(BaseModel):
    """One node of a multi-node job: where its ranks run."""

    node: int = Field(description="The node's rank in the run, from 0.")
    host: str | None = Field(description="Its host name, once the run is placed.")
    ranks: list[int] = Field(description="The ranks (processes) it holds.")
    state: str = Field(description="pending (waiting to be placed), running, finished, "
                       "stopped (cancelled or handed over) or failed.")


class JobPublic(BaseModel):
    id: int
    kind: JobKind
    name: str
    tags: list[str]
    priority: int
    queue: Queue
    status: JobStatus
    config: dict[str, Any]
    resolved_config: dict[str, Any] | None = Field(None, description="A pretraining job's config "
                                                   "as its run decides it: image_size, "
                                                   "small_stem, channels_last filled in, and "
                                                   "monitor_every once its steps are known.")
    parent_id: int | None = Field(description="For a sweep's trial: the sweep.")
    progress: Progress
    eta_seconds: float | None = Field(description="Estimated time to finish, from the rate "
                                      "of progress so far.")
    last_metrics: dict[str, float] | None
    result: dict[str, Any] | None
    error: str | None
    waiting: str | None = Field(description="Why a queued job has not started, where the "
                                "platform can tell: no live worker takes its queue, it "
                                "needs more processes than any live worker can run, or a GPU "
                                "that no live worker on its queue has; for a job of several "
                                "nodes, what the Ray cluster lacks to place it.")
    slots: list[Slot] | None = Field(None, description="A job of several nodes: each node "
                                     "of its run on Ray (config.nodes > 1).")
    cancel_requested: bool
    attempts: int
    resumes: int = Field(description="Times the job was resumed from a checkpoint.")
    checkpoint: str | None
    worker_host: str | None
    device: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobValidated(BaseModel):
    kind: JobKind
    queue: Queue
    config: dict[str, Any] = Field(description="The config the job would run with: every "
                                   "field, the recipe's defaults filled in.")
    waiting: str | None = Field(description="Why the job would wait now (as a queued job's "
                                "`waiting`), or null when a live worker can run it.")


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="Jobs matching the filters, over all pages.")


class Series(BaseModel):
    steps: list[int]
    values: list[float]
    times: list[float] = Field(default_factory=list, description="When each value was "
                               "logged (Unix seconds).")


class MetricsPublic(BaseModel):
    job_id: int
    stride: int = Field(description="Every stride-th step is returned (downsampling).")
    last_step: int = Field(description="Highest step returned; pass it as since_step to poll.")
    series: dict[str, Series]


class LogLinePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="The line's place in the job's log; a cursor for `since`.")
    attempt: int = Field(description="The job's run (1, 2, ... as it was resumed) the line "
                         "comes from.")
    time: datetime
    source: str = Field(description="Who wrote it: 'worker' (the worker and the trainer of "
                        "a one-process job), 'rank N' (a process of a multi-process job) or "
                        "'torchrun'.")
    line: str


class LogsPublic(BaseModel):
    job_id: int
    lines: list[LogLinePublic]
    next: int = Field(description="The id of the last line returned (else `since`): pass "
                      "it as `since` for the lines after these.")


class EvaluationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    protocol: str
    dataset: str
    top1: float
    top5: float
    created_at: datetime


class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    name: str
    backbone: str
    dataset: str
    artifacts: dict[str, Any]
    deployment: dict[str, Any] | None = Field(description="TorchServe deployment: status, "
                                              "`number` (1, 2, ... as it is redeployed: the "
                                              "one version, which answers and galleries "
                                              "call model_version), inference URLs, and "
                                              "`reference_images` (also as `gallery_images`, "
                                              "its deprecated old name).")
    created_at: datetime
    evaluations: list[EvaluationPublic]


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class EmbeddingsPublic(BaseModel):
    model_version: int | None = Field(description="The model's deployment that answered "
                                      "(its number: 1, 2, ... as it was redeployed).")
    batch_size: int = Field(description="Images in the server's batch this request joined.")
    dim: int
    embeddings: list[list[float]] = Field(description="One l2-normalised vector per image, "
                                          "in the request's order.")


class Neighbour(BaseModel):
    id: str = Field(description="The gallery item: its split and index, e.g. 'train/1929'.")
    label: str | int | None
    score: float = Field(description="Cosine similarity to the query.")


class SearchPublic(BaseModel):
    model_version: int | None = Field(description="The model's deployment that answered.")
    batch_size: int
    k: int
    neighbours: list[list[Neighbour]] = Field(description="Per image, best first.")
    vote: list[str | int | None] | None = Field(None, description="Per image, the majority "
                                                "label of its neighbours (with vote=true).")


class GalleryPublic(BaseModel):
    name: str
    model_id: int
    model_version: int | None = Field(description="The deployment number whose embedding "
                                      "space the vectors are in.")
    dim: int
    items: int
    created_at: datetime


class GalleriesPublic(BaseModel):
    data: list[GalleryPublic]


class GalleryAdded(BaseModel):
    added: int = Field(description="Items written (new or replaced).")
    seq: int = Field(description="The gallery's write number that holds them.")


class GalleryItemPublic(BaseModel):
    id: str
    metadata: dict[str, Any] | None
    vector: list[float]


class GalleryItemListed(BaseModel):
    id: str
    metadata: dict[str, Any] | None
    thumbnail: str | None = Field(description="An image item's image, at most 96 px a side "
                                  "(PNG, base64); null for an item added as a vector.")


class GalleryItemsPublic(BaseModel):
    data: list[GalleryItemListed]
    count: int = Field(description="Items in the gallery (or of the ids asked for).")


class GalleryHit(BaseModel):
    id: str
    score: float = Field(description="Cosine similarity to the query.")
    metadata: dict[str, Any] | None


class GallerySearchPublic(BaseModel):
    results: list[GalleryHit]
    model_version: int | None


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. config.batch_size.")
    message: str
    type: str


class ErrorPublic(BaseModel):
    """Every error answer: `detail` says what was wrong and names the field."""

    detail: str
    errors: list[FieldError] | None = Field(None, description="422 only: one per field.")


class DatasetVersionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    uri: str = Field(description="What a job's data_dir names it by: dataset://NAME/NUMBER.")
    digest: str = Field(description="sha256 of the uploaded archive.")
    source: str
    images: int
    classes: dict[str, dict[str, int]] = Field(description="Per class, its train and test "
                                               "images.")
    sizes: dict[str, int] = Field(description="The most common image sizes (WxH) and their "
                                  "counts.")
    split: dict[str, Any] = Field(description="How test images were chosen: the archive's "
                                  "own train/ and test/ folders ({\"given\": true}), or a "
                                  "held-out fraction per class with its seed.")
    thumbnails: list[dict[str, str]] = Field(description="A few training images, one per "
                                             "class: {\"class\", \"png\": base64}.")
    created_at: datetime


class DatasetPublic(BaseModel):
    name: str
    description: str
    latest: int | None = Field(description="The newest version's number (what "
                               "dataset://NAME trains on).")
    versions: list[DatasetVersionPublic]
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
