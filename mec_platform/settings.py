"""Every setting of the platform, read from MEC_* environment variables (and a .env file)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

INFERENCE_PORT, MANAGEMENT_PORT = 8080, 8081  # TorchServe's own defaults, where `mec up` starts it


class Settings(BaseSettings):
    """Embedded defaults (SQLite, a broker in a SQLite file, CPU) need nothing installed;
    production points MEC_DATABASE_URL at PostgreSQL and MEC_BROKER_URL at Redis."""

    model_config = SettingsConfigDict(env_prefix="MEC_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./mec-data"), description="Where the embedded database, "
                           "broker file and (by default) artifacts live.")
    database_url: str = Field(description="SQLAlchemy URL; default: SQLite file "
                              "data_dir/mec.db.")
    broker_url: str = Field(description="Celery broker URL (redis://...); default: "
                            "SQLite-backed kombu transport in data_dir.")
    artifact_root: Path = Field(description="This host's working folder for what jobs "
                                "write before it is stored (checkpoints, exports, "
                                "archives), and the default file:// store's parent; "
                                "default: data_dir/artifacts.")
    storage_url: str = Field(description="Where what the platform keeps goes (dataset "
                             "versions, checkpoints, exports, archives, reference images, "
                             "evaluations' features, uploads, import staging): "
                             "file:///path, or s3://bucket/prefix on any "
                             "S3-compatible server (MEC_S3_ENDPOINT_URL and the usual "
                             "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). Default: "
                             "file://artifact_root/store.")
    s3_endpoint_url: str | None = Field(None, description="The S3 server of an s3:// "
                                        "storage URL (SeaweedFS, MinIO, Ceph); unset: AWS.")
    cache_dir: Path = Field(description="Each process's local copies of stored objects "
                            "(datasets unpacked), keyed by content digest; default: "
                            "data_dir/cache.")
    cache_mb: int = Field(20_480, ge=1, description="Bound of cache_dir, in MiB: the least "
                          "recently used entries are removed beyond it.")
    keep_evaluation_features: bool = Field(
        True, description="An evaluation keeps its features of the train images in the "
        "store (one file per model, N x D float32, replaced by the next evaluation), which "
        "the model's deploys reuse for the same images instead of embedding them again; "
        "false: nothing is kept and deploys always embed.")
    max_dataset_mb: int = Field(10_240, ge=1, description="Largest dataset archive "
                                "(POST /v1/datasets/{name}/versions), in MiB.")
    lease_seconds: float = Field(60.0, gt=0, description="A running job whose lease is not "
                                 "renewed for this long is presumed dead and re-queued.")
    heartbeat_seconds: float = Field(10.0, gt=0, description="How often a worker renews the "
                                     "lease of the job it runs.")
    reaper_seconds: float = Field(15.0, gt=0, description="How often each worker looks for "
                                  "jobs whose lease expired, to re-queue them.")
    reconcile_grace_seconds: float = Field(30.0, ge=0, description="A queued job whose "
                                           "message the broker lost is re-enqueued once it "
                                           "has waited this long (checked with the reaper).")
    max_attempts: int = Field(3, ge=1, description="Runs of a job (first + resumes) before it "
                              "is failed for good.")
    cancel_poll_seconds: float = Field(1.0, gt=0, description="How often the training loop "
                                       "reads the cancel flag from the database.")
    worker_processes: int | None = Field(None, ge=1, le=64, description="Training processes "
                                         "this worker can launch for one job "
                                         "(config.processes); default: its visible GPUs, "
                                         "1 without CUDA.")
    ray_address: str | None = Field(None, description="The Ray cluster that runs jobs of "
                                    "several nodes (config.nodes > 1), as ray.init takes it "
                                    "(ray://host:10001, or host:6379 from inside the "
                                    "cluster); unset: such jobs are refused. Its nodes reach "
                                    "the database and the store; with an S3 store they share "
                                    "no disk with the workers (\"Scaling out\").")
    job_log_lines: int = Field(10_000, ge=100, description="Log lines kept per job (the "
                               "newest; each line cut to 2,000 characters).")
    visibility_timeout: int = Field(43_200, gt=0, description="Redis visibility timeout in "
                                    "seconds (unacknowledged messages are redelivered after it).")

    data_roots: list[Path] = Field([Path("/usr/share/datasets")], description="Directories "
                                   "under which a job's data_dir must lie (after resolving "
                                   "symlinks); data_dir/datasets is always allowed.")
    max_upload_mb: int = Field(2048, ge=1, description="Largest body streamed to disk (a "
                               "checkpoint POST /v1/models, an NDJSON gallery import), in MiB.")
    max_json_mb: int = Field(32, ge=1, description="Largest JSON body of a gallery add "
                             "(parsed in memory; larger adds go as NDJSON), in MiB.")
    max_queued_imports: int = Field(20, ge=1, description="Gallery imports a project may "
                                    "have queued at once (they share the cpu queue with "
                                    "deploys).")
    submit_rate_per_minute: float = Field(120.0, gt=0, description="Job submissions allowed "
                                          "per API key and minute, on average (per API "
                                          "process).")
    submit_burst: int = Field(300, ge=1, description="Submissions a key may make at once "
                              "before the rate limit applies.")
    torchserve_inference_url: str = Field(f"http://127.0.0.1:{INFERENCE_PORT}", description=
                                          "TorchServe inference API, as clients reach it.")
    torchserve_management_url: str = Field(f"http://127.0.0.1:{MANAGEMENT_PORT}", description=
                                           "TorchServe management API (loopback only).")
    torchserve_home: Path = Field(description="TorchServe's working directory, where it "
                                  "writes key_file.json; default: data_dir/torchserve.")
    torchserve_keys: Literal["home", "store"] = Field("home", description="Where this "
                                                     "process reads TorchServe's keys: "
                                                     "`home`, the key_file.json in "
                                                     "torchserve_home (TorchServe on this "
                                                     "host); `store`, the copy TorchServe's "
                                                     "host publishes in the store (`mec "
                                                     "torchserve publish-keys`), so that "
                                                     "no folder is shared.")
    model_store: Path = Field(description="TorchServe's model store: where .mar files go "
                              "on a file:// store (with an s3:// store TorchServe downloads "
                              "them there itself). Default: artifact_root/model-store.")

    metrics_networks: list[str] = Field(["127.0.0.1/32", "::1/128"], description="Client "
                                        "networks (CIDR) that may read GET /metrics without a "
                                        "key; from anywhere else it needs a key with the "
                                        "admin scope. Default: this host only (the figures "
                                        "span every project).")
    worker_metrics_port: int | None = Field(None, ge=0, le=65535, description="Port of each "
                                            "worker's own Prometheus endpoint (0: a free one, "
                                            "logged); unset: none. Several workers on one "
                                            "host need a port each.")
    worker_metrics_host: str = Field("127.0.0.1", description="Address the worker's "
                                     "metrics endpoint listens on (0.0.0.0 in containers).")

    @field_validator("metrics_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"not a network (CIDR), got {net!r}") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _from_data_dir(cls, values: dict) -> dict:
        """Fill the settings left unset from data_dir and resolve the paths: each setting
        has one name and one value, the one the platform uses."""
        data = Path(values.get("data_dir") or cls.model_fields["data_dir"].default).resolve()
        artifacts = Path(values.get("artifact_root") or data / "artifacts").resolve()
        return values | {
            "database_url": values.get("database_url") or f"sqlite:///{data / 'mec.db'}",
            "broker_url": values.get("broker_url") or f"sqla+sqlite:///{data / 'broker.db'}",
            "artifact_root": artifacts,
            "storage_url": values.get("storage_url") or f"file://{artifacts / 'store'}",
            "cache_dir": Path(values.get("cache_dir") or data / "cache").resolve(),
            "torchserve_home": Path(values.get("torchserve_home") or data / "torchserve").resolve(),
            "model_store": Path(values.get("model_store") or artifacts / "model-store").resolve(),
        }

    @property
    def allowed_data_roots(self) -> list[Path]:
        return [p.resolve() for p in [*self.data_roots, self.data_dir / "datasets"]]


@lru_cache
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings()
