"""The specs of the platform's own jobs (evaluation, deployment), read by the API and
the worker. A pretraining job's spec is mec_core's TrainConfig."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mec_core.config import DatasetName

ID_MAX = 2**31 - 1  # ids, steps and offsets are PostgreSQL INTEGER columns


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


class DeploySpec(BaseModel):
    """How to serve a model with TorchServe."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    workers: int | None = Field(None, ge=1, le=16, description="TorchServe workers per "
                                "endpoint; default: one per core up to 4 on a CPU host (each "
                                "with a share of the cores), one on a GPU host.")
    torch_threads: int | None = Field(None, ge=1, le=256, description="torch threads of "
                                      "each worker; default: the cores divided among the "
                                      "workers.")
    batch_size: int | None = Field(None, ge=1, le=256, description="Largest dynamic batch "
                                   "of each worker; default: 8 images in flight over all "
                                   "the workers (4 each for 2 workers).")
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
