"""Request and response bodies. A pretraining job's `config` *is* mec_core's TrainConfig."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mec_core.config import DatasetName, TrainConfig

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]



ID_MAX = 2**31 - 1  # ids, steps and offsets are PostgreSQL INTEGER columns

class _JobFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200, description="Human-readable name of the job.")
    tags: list[Tag] = Field(default_factory=list, max_length=20,
                            description="Labels to filter jobs by.")
    priority: int = Field(0, ge=0, le=9, description="Broker priority, 9 = most urgent.")


class PretrainJobCreate(_JobFields):
    """Pretrain an encoder with MEC; `config` has the fields of `mec train`."""

    kind: Literal["pretrain"]
    queue: Literal["gpu", "cpu"] = Field("gpu", description="Worker queue that runs the job.")
    config: TrainConfig

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "kind": "pretrain", "name": "fmnist-convnet", "tags": ["demo"],
        "config": {"dataset": "fashion-mnist", "backbone": "convnet", "epochs": 2,
                   "batch_size": 256, "proj_dim": 512}}]})


class EvaluateSpec(BaseModel):
    """Frozen-feature evaluation of a finished pretraining job."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    job_id: int = Field(ge=1, le=ID_MAX, description="The succeeded pretraining (or import) "
                        "job whose model to evaluate.")
    protocol: Literal["knn", "linear"] = Field("knn", description="Weighted kNN or linear probe.")
    dataset: DatasetName | None = Field(None, description="Default: the job's training set.")
    data_dir: str | None = Field(None, max_length=1000, description="Dataset directory.")
    k: int = Field(200, ge=1, le=10_000, description="kNN neighbours.")
    temperature: float = Field(0.1, gt=0, le=10.0, description="kNN vote temperature.")
    steps: int = Field(100, ge=1, le=10_000, description="L-BFGS iterations of the probe.")
    train_limit: int | None = Field(None, ge=1, le=ID_MAX,
                                    description="Use the first N train images.")
    test_limit: int | None = Field(None, ge=1, le=ID_MAX,
                                   description="Use the first N test images.")


class EvaluateJobCreate(_JobFields):
    """Evaluate the encoder of a finished pretraining job (kNN or linear probe)."""

    kind: Literal["evaluate"]
    queue: Literal["gpu", "cpu"] = Field("cpu", description="Worker queue that runs the job.")
    config: EvaluateSpec

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "kind": "evaluate", "config": {"job_id": 1, "protocol": "knn"}}]})


JobCreate = Annotated[PretrainJobCreate | EvaluateJobCreate, Field(discriminator="kind")]


class Progress(BaseModel):
    step: int
    total_steps: int | None
    epoch: int
    steps_per_epoch: int | None
    percent: float


class JobPublic(BaseModel):
    id: int
    kind: str
    name: str
    tags: list[str]
    priority: int
    queue: str
    status: JobStatus
    config: dict[str, Any]
    progress: Progress
    eta_seconds: float | None = Field(description="Estimated time to finish, from the rate "
                                      "of progress so far.")
    last_metrics: dict[str, float] | None
    result: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    attempts: int
    resumes: int = Field(description="Times the job was resumed from a checkpoint.")
    checkpoint: str | None
    worker_host: str | None
    device: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="Jobs matching the filters, over all pages.")


class Series(BaseModel):
    steps: list[int]
    values: list[float]


class MetricsPublic(BaseModel):
    job_id: int
    stride: int = Field(description="Every stride-th step is returned (downsampling).")
    last_step: int = Field(description="Highest step returned; pass it as since_step to poll.")
    series: dict[str, Series]


class EvaluationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    protocol: str
    dataset: str
    top1: float
    top5: float
    created_at: datetime


class DeploySpec(BaseModel):
    """How to serve a model with TorchServe."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    workers: int = Field(1, ge=1, le=16, description="TorchServe workers per endpoint.")
    batch_size: int = Field(8, ge=1, le=256, description="Largest dynamic batch.")
    max_batch_delay_ms: int = Field(20, ge=0, le=10_000, description="How long TorchServe "
                                    "waits to fill a batch.")
    gallery_dataset: DatasetName | None = Field(None, description="kNN gallery; default: "
                                                "the model's training set.")
    gallery_data_dir: str | None = Field(None, max_length=1000)
    gallery_split: Literal["train", "test"] = "train"
    gallery_limit: int | None = Field(None, ge=1, le=ID_MAX,
                                      description="First N gallery items only.")
    drain_seconds: float = Field(5.0, ge=0, le=600, description="On re-deploy, how long the "
                                 "old version keeps finishing its queued requests after the "
                                 "new one takes the traffic.")


class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    name: str
    backbone: str
    dataset: str
    artifacts: dict[str, Any]
    deployment: dict[str, Any] | None = Field(description="TorchServe deployment: status, "
                                              "version and inference URLs.")
    created_at: datetime
    evaluations: list[EvaluationPublic]


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class WorkerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    host: str
    queues: list[str]
    device: str
    current_job: int | None
    started_at: datetime
    seen_at: datetime


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. config.batch_size.")
    message: str
    type: str


class ErrorPublic(BaseModel):
    """Every error answer: `detail` says what was wrong and names the field."""

    detail: str
    errors: list[FieldError] | None = Field(None, description="422 only: one per field.")


def errors(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses` for these error status codes, all with ErrorPublic bodies."""
    what = {400: "The body could not be parsed.", 401: "No or unknown API key.",
            403: "The API key was revoked.",
            404: "No such job or model.", 409: "The job has already finished.",
            413: "The upload is over the size limit.",
            422: "Invalid input; `detail` names the field. Nothing was created.",
            429: "Too many submissions for this key; see Retry-After.",
            503: "The database or the broker is unreachable."}
    return {code: {"model": ErrorPublic, "description": what[code]} for code in codes}
