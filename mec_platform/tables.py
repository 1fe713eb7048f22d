"""Database schema (SQLAlchemy 2.0): jobs, their metrics, finished models, evaluations,
live workers, API keys, the audit log, and apps' galleries of embedded items. Jobs, models
and galleries belong to the project of the key that created them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates
from sqlalchemy.types import TypeDecorator

from mec_platform.specs import Deployment


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite stores no time zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=UTC)


class DeploymentRecord(TypeDecorator):
    """models.deployment: JSON in the database, a specs.Deployment in Python; every write
    and every read goes through the type."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else \
            Deployment.model_validate(value).model_dump(mode="json", exclude_none=True)

    def process_result_value(self, value, dialect):
        return None if value is None else Deployment.model_validate(value)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: UTCDateTime}


class Job(Base):
    __tablename__ = "jobs"
    # a sweep has one trial (and one evaluation of it) of each number
    __table_args__ = (Index("ix_jobs_parent_kind_trial", "parent_id", "kind", "trial",
                            unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # a jobs.JobKind
    project: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    tags: Mapped[list[str]] = mapped_column(default=list)
    priority: Mapped[int] = mapped_column(default=0)
    queue: Mapped[str] = mapped_column(String(32))  # a queue.Queue
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), index=True)  # a jobs.JobStatus
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]
    step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int | None]
    epoch: Mapped[int] = mapped_column(default=0)
    steps_per_epoch: Mapped[int | None]
    last_metrics: Mapped[dict[str, Any] | None]
    checkpoint: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires: Mapped[datetime | None]
    worker_host: Mapped[str | None] = mapped_column(String(200))
    device: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    parent_id: Mapped[int | None] = mapped_column(index=True)  # the sweep of a trial
    trial: Mapped[int | None]  # a sweep's child: the number of its trial (0, 1, ...)
    # a multi-node job's run on Ray: {"slots": [{"node", "host", "ranks", "state"}], and
    # "waiting": what the cluster lacks while its workers wait to be placed}; a deploy job:
    # {"waiting": the deploy of the same model it waits behind} or {"deploying": true}
    placement: Mapped[dict[str, Any] | None]

    metrics: Mapped[list[Metric]] = relationship(back_populates="job", cascade="all, delete",
                                                 passive_deletes=True)


class Lease(Base):
    """One run of a job by one owner (a worker's attempt): from its claim until it ended
    (finished, handed back, or reaped at `expires`). Two leases of a job never overlap."""

    __tablename__ = "job_leases"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    claimed_at: Mapped[datetime]
    expires: Mapped[datetime]  # renewed with the job's lease
    ended_at: Mapped[datetime | None]


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job_name_step", "job_id", "name", "step", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int]
    epoch: Mapped[int]
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="metrics")


class LogLine(Base):
    """One line a job wrote (its trainer, the worker about it, a rank of a multi-process
    job), in order of `id` (a reader's cursor), per attempt (the job's run it came from)."""

    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    time: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(32))  # "worker", "rank 0", "torchrun"
    line: Mapped[str] = mapped_column(Text)


class Model(Base):
    """A finished encoder: the artifacts of a succeeded pretraining job."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    backbone: Mapped[str] = mapped_column(String(32))
    dataset: Mapped[str] = mapped_column(String(32))
    artifacts: Mapped[dict[str, Any]]
    deployment: Mapped[Deployment | None] = mapped_column(DeploymentRecord)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    evaluations: Mapped[list[Evaluation]] = relationship(back_populates="model",
                                                         order_by="Evaluation.id")

    @validates("deployment")
    def _typed(self, _key: str, value) -> Deployment | None:
        """A record assigned as a dict is read as the database would give it back."""
        return None if value is None else Deployment.model_validate(value)


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    protocol: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(32))
    top1: Mapped[float]
    top5: Mapped[float]
    result: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    model: Mapped[Model] = relationship(back_populates="evaluations")


class Worker(Base):
    """A worker process seen alive; `seen_at` is renewed by its heartbeat."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    queues: Mapped[list[str]]
    device: Mapped[str] = mapped_column(String(200))
    processes: Mapped[int] = mapped_column(default=1, server_default="1")  # per job, at most
    current_job: Mapped[int | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A client credential. Only a SHA-256 hash of the key is stored; the key itself is
    shown once, when created."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    project: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]]  # keys.Scope values
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class AuditEntry(Base):
    """One state-changing request: who (key prefix), what, when, from where, and how it
    ended (the HTTP status)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    key_prefix: Mapped[str | None] = mapped_column(String(16))
    project: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(200))  # method and route, e.g. POST /v1/jobs
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[int]
    address: Mapped[str | None] = mapped_column(String(64))


class Dataset(Base):
    """A project's named dataset; its content is in its versions."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project", "name"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetVersion(Base):
    """One immutable upload of a dataset, arranged as an image folder (train/ and test/ of
    class folders) in one tar in the store (`key`); `digest` is the uploaded archive's
    sha256; `classes` maps each class to its train and test counts."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "number"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"),
                                            index=True)
    number: Mapped[int]
    key: Mapped[str] = mapped_column(String(500))
    digest: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(500))
    images: Mapped[int]
    classes: Mapped[dict[str, Any]] = mapped_column(JSON)
    sizes: Mapped[dict[str, Any]] = mapped_column(JSON)
    split: Mapped[dict[str, Any]] = mapped_column(JSON)
    thumbnails: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Gallery(Base):
    """An app's named collection of embedded items, bound to one model and to the version
    of its deployment whose embedding space the vectors are in. `seq` counts the gallery's
    writes: each write stamps its items with the new value, so a reader that has seen up to
    `seq` S reads what changed since with `GalleryItem.seq > S`."""

    __tablename__ = "galleries"
    # AUTOINCREMENT: SQLite never gives a deleted gallery's id again (migration 0009)
    __table_args__ = (UniqueConstraint("project", "name"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    model_version: Mapped[int | None]  # the deployment's number its vectors come from
    dim: Mapped[int]
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GalleryItem(Base):
    """One item: the caller's id, its metadata and its unit vector (float32 bytes). A
    deleted item stays as a tombstone (no vector) so that readers see the deletion."""

    __tablename__ = "gallery_items"
    __table_args__ = (UniqueConstraint("gallery_id", "item_id"),
                      Index("ix_gallery_items_gallery_seq", "gallery_id", "seq"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"))
    item_id: Mapped[str] = mapped_column(String(200))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    thumbnail: Mapped[bytes | None] = mapped_column(LargeBinary)  # PNG, of an image item
    seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
