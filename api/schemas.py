"""Request bodies, and the public views of database rows (built as the response bodies of
mec_client.models). A pretraining job's `config` *is* mec_core's TrainConfig."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    TypeAdapter,
    ValidationError,
    WrapValidator,
    model_validator,
)

from mec_client.enums import JobKind, JobStatus, Queue
from mec_client.models import ErrorPublic, JobPublic, ModelPublic, Progress
from mec_core.config import TrainConfig, resolved, stored_config
from mec_platform.galleries import NAME_PATTERN
from mec_platform.specs import ID_MAX, EvaluateSpec, SweepSpec, coerced
from mec_platform.tables import Job, Model, utcnow
from mec_platform.workers import QueueCapacity, waiting_reason


def as_json_types(body: Any, *metadata: Any) -> Any:
    """`body` as a request body whose values have the JSON types the schema gives them:
    what pydantic would take only by coercing (true or "5" as an integer, 0 or "yes" as a
    boolean) is refused, 422 naming the field; JSON's own readings stay (a string as an
    enum, an array as a tuple, an integer as a number)."""
    strict = TypeAdapter(Annotated[(body, *metadata)] if metadata else body)

    def check(value: Any, handler) -> Any:
        valid = handler(value)  # the usual errors first
        try:
            strict.validate_json(json.dumps(value), strict=True)
        except ValidationError as exc:
            error = coerced(exc)
            if error is None:
                return valid
            loc = list(error["loc"])
            if loc and isinstance(value, dict) and loc[0] == value.get("kind"):
                loc.pop(0)  # a union's tag, which pydantic puts in the path
            raise ValueError(f"{'.'.join(map(str, loc))}: {error['msg']}") from None
        return valid

    return Annotated[(body, *metadata, WrapValidator(check))]


def _not_a_number(value: Any) -> Any:
    """Pydantic reads a number as seconds since 1970; the schema says a date-time."""
    try:
        float(value)
    except (TypeError, ValueError):
        return value
    raise ValueError("give a time in ISO 8601, e.g. 2026-12-01T00:00:00Z")


# a time in ISO 8601, as the schema's date-time says (not a number of seconds)
IsoTime = Annotated[datetime, BeforeValidator(_not_a_number)]
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


# no control characters (C0, DEL, C1) nor invisible or bidi formatting ones, which a
# terminal or a page showing the text would obey
PRINTABLE = ("^[^\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064"
             "\u2066-\u2069\ufeff]*$")


class _JobFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200, pattern=PRINTABLE,
                      description="Human-readable name of the job.")
    tags: list[Tag] = Field(default_factory=list, max_length=20,
                            description="Labels to filter jobs by.")
    priority: int = Field(0, ge=0, le=9, description="Broker priority, 9 = most urgent.")


class PretrainJobCreate(_JobFields):
    """Pretrain an encoder with MEC; `config` has the fields of `mec train`."""

    kind: Literal[JobKind.PRETRAIN]
    queue: Queue = Field(Queue.GPU, description="Worker queue that runs the job.")
    config: TrainConfig

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "kind": "pretrain", "name": "fmnist-convnet", "tags": ["demo"],
        "config": {"dataset": "fashion-mnist", "backbone": "convnet", "epochs": 2,
                   "batch_size": 256, "proj_dim": 512}}]})


class EvaluateJobCreate(_JobFields):
    """Evaluate the encoder of a finished pretraining job (kNN or linear probe)."""

    kind: Literal[JobKind.EVALUATE]
    queue: Queue = Field(Queue.CPU, description="Worker queue that runs the job.")
    config: EvaluateSpec

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "kind": "evaluate", "config": {"job_id": 1, "protocol": "knn"}}]})


class SweepJobCreate(_JobFields):
    """Pretraining trials over a search space; each trial is a pretrain job whose
    `parent_id` is the sweep's id, and the sweep's `result` names the best."""

    kind: Literal[JobKind.SWEEP]
    queue: Literal[Queue.CPU] = Field(Queue.CPU, description="The sweep's own bookkeeping "
                                      "runs on a CPU worker; its trials go to the gpu queue.")
    config: SweepSpec

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "kind": "sweep", "name": "fmnist-lr-eps",
        "config": {"base": {"dataset": "fashion-mnist", "backbone": "convnet", "epochs": 2},
                   "space": {"base_lr": {"choice": [0.1, 0.5]},
                             "eps_sq": {"loguniform": [8, 128]}},
                   "algorithm": "tpe", "objective": {"metric": "knn_top1", "mode": "max"},
                   "max_trials": 8, "max_parallel": 2}}]})


JobCreate = as_json_types(PretrainJobCreate | EvaluateJobCreate | SweepJobCreate,
                          Discriminator("kind"))


def public(job: Job, now: datetime | None = None,
           capacity: dict[str, QueueCapacity] | None = None) -> JobPublic:
    """The API view of a job, with progress and ETA derived from its counters; given the
    live workers' `capacity` (mec_platform.workers), a queued job says why it waits."""
    total = job.total_steps
    percent = 100.0 if job.status == JobStatus.SUCCEEDED else (
        100.0 * job.step / total if total else 0.0)
    eta = None
    if job.status == JobStatus.RUNNING and total and job.step and job.started_at:
        elapsed = ((now or utcnow()) - job.started_at).total_seconds()
        eta = elapsed / job.step * (total - job.step)
    return JobPublic(
        id=job.id, kind=job.kind, name=job.name, tags=job.tags, priority=job.priority,
        queue=job.queue, status=job.status, config=job.config,
        resolved_config=_resolved(job), parent_id=job.parent_id,
        progress=Progress(step=job.step, total_steps=total, epoch=job.epoch,
                          steps_per_epoch=job.steps_per_epoch, percent=round(percent, 2)),
        eta_seconds=eta, last_metrics=job.last_metrics, result=job.result, error=job.error,
        waiting=waiting_reason(job, capacity) if capacity is not None and
        job.status == JobStatus.QUEUED else (job.placement or {}).get("waiting")
        if job.status == JobStatus.RUNNING else None,
        slots=(job.placement or {}).get("slots"),
        cancel_requested=job.cancel_requested, attempts=job.attempts,
        resumes=max(job.attempts - 1, 0), checkpoint=job.checkpoint,
        worker_host=job.worker_host, device=job.device, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at)


def _resolved(job: Job) -> dict[str, Any] | None:
    if job.kind != JobKind.PRETRAIN:
        return None
    try:
        return resolved(stored_config(job.config), job.total_steps)
    except ValidationError:  # a row of a schema older than stored_config reads: as stored
        return None


def model_public(model: Model) -> ModelPublic:
    """The API view of a model, with its deployment's public view."""
    return ModelPublic(id=model.id, job_id=model.job_id, name=model.name,
                       backbone=model.backbone, dataset=model.dataset, artifacts=model.artifacts,
                       deployment=model.deployment and model.deployment.public(),
                       created_at=model.created_at, evaluations=model.evaluations)


GalleryName = Annotated[str, Field(pattern=NAME_PATTERN, description="Letters, digits, "
                                   "'_', '.', '-'; up to 100 characters.")]
ItemId = Annotated[str, Field(min_length=1, max_length=200)]


class GalleryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: GalleryName
    model_id: int = Field(ge=1, le=ID_MAX, description="The deployed model whose embeddings "
                          "the gallery holds (bound to its current version).")


Scalar = str | int | float | bool | None


def _condition(value: Any, handler: Any) -> Any:
    """One condition of a filter, refused in one sentence rather than one line per branch
    of the union it tried."""
    try:
        return handler(value)
    except ValidationError:
        raise ValueError('a string, number, boolean or null, or {"in": [such values, ...]}'
                         ) from None


# {"key": value, "other": {"in": [values]}}: every condition must hold
Filter = Annotated[dict[str, Annotated[Scalar | Annotated[
    dict[Literal["in"], list[Scalar]], Field(min_length=1)], WrapValidator(_condition)]],
    Field(min_length=1)]


def _exactly_one(*fields: str, extra: dict | None = None) -> dict:
    """The schema of "exactly one of these fields" (a rule the validator enforces too)."""
    return {"oneOf": [{"required": [f]} for f in fields] + ([extra] if extra else [])}


class GalleryItemIn(BaseModel):
    """An item: the app's id, its metadata, and an image (base64) or a vector."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False,
                              json_schema_extra=_exactly_one("image", "vector"))

    id: ItemId
    metadata: dict[str, Any] | None = Field(None, description="Any JSON object; top-level "
                                            "keys with string, number, boolean or null "
                                            "values can be filtered on.")
    # not nullable: a field given is the item's source (None only when left out)
    image: str = Field(None, description="An image file, base64.")
    vector: list[float] = Field(None, min_length=1, max_length=65_536,
                                description="An embedding of the gallery's model "
                                "(l2-normalised on the way in; not all zeros).")

    @model_validator(mode="after")
    def _one_source(self) -> GalleryItemIn:
        if (self.image is None) == (self.vector is None):
            raise ValueError("give either 'image' or 'vector'")
        return self


class GalleryItemsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[GalleryItemIn] = Field(min_length=1, max_length=10_000)


class GalleryDelete(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=_exactly_one(
        "ids", "filter", extra={"required": ["all"], "properties": {"all": {"const": True}}}))

    ids: list[ItemId] = Field(None, min_length=1, max_length=10_000)
    filter: Filter = Field(None, description="Delete the items this keeps.")
    all: bool = Field(False, description="Delete every item (alone: not with ids or filter).")

    @model_validator(mode="after")
    def _one_way(self) -> GalleryDelete:
        if sum((self.ids is not None, self.filter is not None, self.all)) != 1:
            raise ValueError("give one of 'ids', 'filter' or \"all\": true")
        return self


class GalleryDeleted(BaseModel):
    deleted: int


class GallerySearch(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False,
                              json_schema_extra=_exactly_one("image", "vector", "item_id"))

    # not nullable: a field given is the query (None only when left out)
    image: str = Field(None, description="Query image, base64.")
    vector: list[float] = Field(None, min_length=1, max_length=65_536)
    item_id: ItemId = Field(None, description="An item of the gallery (left out of its own "
                            "results).")
    k: int = Field(10, ge=1, le=1000)
    filter: Filter = Field(None, description="{\"key\": value, \"other\": {\"in\": "
                           "[values]}}: all must hold.")

    @model_validator(mode="after")
    def _one_query(self) -> GallerySearch:
        if sum(x is not None for x in (self.image, self.vector, self.item_id)) != 1:
            raise ValueError("give one of 'image', 'vector' or 'item_id'")
        return self


class WorkerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    host: str
    queues: list[str]
    device: str
    processes: int = Field(description="Training processes it can launch for one job.")
    current_job: int | None
    started_at: datetime
    seen_at: datetime


class AuditEntryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    key_prefix: str | None = Field(description="First 12 characters of the caller's key "
                                   "(none when the request had no valid key).")
    project: str | None
    action: str = Field(description="Method and route, e.g. 'POST /v1/jobs/{job_id}/cancel'.")
    path: str
    status: int = Field(description="The HTTP status the request ended with.")
    address: str | None


class AuditPublic(BaseModel):
    data: list[AuditEntryPublic]
    count: int


COMMON_ERRORS = {  # causes that are the same on every route
    400: "The body could not be parsed.",
    401: "No or unknown API key.",
    403: "The API key was revoked, or lacks the route's scope, or the dashboard's cookie "
         "login sent no CSRF header.",  # each route's scope is named by api.main.openapi
    413: "The body is over the size limit.",
    415: "The body is of a type the route does not take.",
    422: "Invalid input; `detail` names the field. Nothing was created.",
    503: "The database or the broker is unreachable."}


def errors(*entries: int | dict[int, str]) -> dict[int | str, dict]:
    """OpenAPI `responses` with ErrorPublic bodies: a code of COMMON_ERRORS, or
    {code: what it means here} for causes that differ by router or route (404, 409, ...)."""
    texts: dict[int, str] = {}
    for entry in entries:
        texts |= entry if isinstance(entry, dict) else {entry: COMMON_ERRORS[entry]}
    return {code: {"model": ErrorPublic, "description": text} for code, text in texts.items()}
