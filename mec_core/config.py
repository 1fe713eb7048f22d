"""The one description of a pretraining run, shared by the CLI, the REST API and the worker.

Defaults follow the reference recipe of the paper (Sec. 3 and the official code) unless a
field says otherwise; fields that depend on the machine or the data default to `None`
("decide from the dataset / device") and are resolved by pure functions, never by mutating
the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DatasetName = Literal["digits", "fashion-mnist", "cifar10", "imagefolder", "synthetic"]
BackboneName = Literal["convnet", "resnet18", "resnet50"]


class TrainConfig(BaseModel):
    """A MEC pretraining run (Liu et al., NeurIPS 2022, Eq. 3 with the reference recipe)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    # --- data -------------------------------------------------------------------------
    dataset: DatasetName = Field(
        "fashion-mnist", description="Training set by name (digits, fashion-mnist, cifar10, "
        "imagefolder, synthetic)."
    )
    data_dir: str | None = Field(
        None, description="Directory of the dataset; default: the dataset's standard place."
    )
    train_limit: int | None = Field(
        None, ge=1, le=100_000_000,
        description="Use only the first N training images (quick runs); default: all.",
    )
    image_size: int | None = Field(
        None, ge=8, le=512,
        description="Side of the square crops fed to the encoder, in pixels; default: the "
        "dataset's native size (224 for imagefolder, at least 16).",
    )
    augmentation: Literal["auto", "moco_v3", "small_gray"] = Field(
        "auto", description="Two-view recipe: moco_v3 (the paper's, for colour images), "
        "small_gray (for small grayscale images); auto picks by the dataset's channels.",
    )

    # --- model ------------------------------------------------------------------------
    backbone: BackboneName = Field(
        "resnet18", description="Encoder backbone: convnet (small, CPU-friendly), resnet18, "
        "resnet50 (torchvision).",
    )
    small_stem: bool | None = Field(
        None, description="ResNet stem for 28-64 px images (3x3 conv, stride 1, no max-pool); "
        "default: on when image_size <= 64.",
    )
    proj_dim: int = Field(
        2048, ge=8, le=65_536, description="Output dimension d of the projector (paper: 2048)."
    )
    proj_hidden_dim: int | None = Field(
        None, ge=8, le=65_536,
        description="Hidden width of the 3-layer projector; default: the backbone's feature "
        "width (2048 for resnet50), as in the reference code.",
    )
    pred_hidden_dim: int = Field(
        512, ge=8, le=65_536, description="Hidden width of the 2-layer predictor (paper: 512)."
    )
    predictor: bool = Field(
        True, description="Use the predictor on the student (asymmetric). Off: the symmetric "
        "ablation of Table 5.",
    )
    teacher_momentum: float = Field(
        0.996, ge=0.0, lt=1.0,
        description="Base EMA momentum of the teacher, raised to 1 by a cosine schedule "
        "(paper: 0.996). 0 shares the student's weights (Table 5 ablation).",
    )

    # --- objective --------------------------------------------------------------------
    eps_sq: float = Field(
        64.0, gt=0.0, le=1e6,
        description="Distortion eps^2 of Eq. 1; eps_d^2 = eps^2/d and lambda = 1/(m eps_d^2) "
        "(paper: 64).",
    )
    order: int | None = Field(
        4, ge=1, le=16,
        description="Order n of the Taylor series of Eq. 3; null (CLI: none): exact log-det "
        "(paper: 4).",
    )
    lambda_warmup_factor: float = Field(
        8.0, ge=1.0, le=1e4,
        description="lambda^-1 starts at this multiple of its final value and decreases "
        "linearly to it (paper code: 8).",
    )
    lambda_warmup_epochs: float = Field(
        10.0, ge=0.0, le=10_000,
        description="Length of the lambda^-1 warm-up in epochs (paper code: 10).",
    )

    # --- optimisation -----------------------------------------------------------------
    epochs: int = Field(100, ge=1, le=10_000, description="Passes over the training set.")
    max_steps: int | None = Field(
        None, ge=1, le=100_000_000,
        description="Stop after this many optimizer steps; the schedules are fitted to the "
        "shorter run. Default: epochs x steps per epoch.",
    )
    batch_size: int = Field(
        256, ge=2, le=65_536,
        description="Global batch m over all processes (paper: 1024 on ImageNet).",
    )
    optimizer: Literal["sgd", "lars"] = Field(
        "sgd", description="SGD with momentum (paper), or LARS for very large batches."
    )
    base_lr: float = Field(
        0.5, gt=0.0, le=100.0,
        description="Learning rate per 256 images: lr = base_lr x batch_size / 256 (paper: 0.5).",
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Optimizer momentum (paper: 0.9).")
    weight_decay: float = Field(1e-5, ge=0.0, le=1.0, description="Weight decay (paper: 1e-5).")
    warmup_epochs: float = Field(
        10.0, ge=0.0, le=10_000,
        description="Linear learning-rate warm-up before the cosine decay, in epochs (paper: 10).",
    )

    # --- execution --------------------------------------------------------------------
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$",
        description="auto (CUDA when present), cpu, cuda or cuda:N.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Autocast precision of the network; the loss's matrix part always "
        "runs in float32. auto: bf16 on CUDA and on CPUs with bf16 instructions (AVX512-BF16 "
        "or AMX), else fp32.",
    )
    channels_last: bool | None = Field(
        None, description="Use the channels_last memory format (faster convolutions with "
        "cuDNN and oneDNN); default: on."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of data order, views and init.")
    checkpoint_every: int = Field(
        500, ge=1, le=100_000_000, description="Save a checkpoint every N steps (and at the end)."
    )
    log_every: int = Field(
        10, ge=1, le=100_000,
        description="Hand metrics to callbacks every N steps (one host sync per N steps).",
    )


def cpu_has_bf16() -> bool:
    """The CPU computes in bfloat16 natively (AVX512-BF16 or AMX), as Linux reports it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(config: TrainConfig, device_type: str) -> str:
    """fp32, bf16 or fp16 for `config.precision` on this kind of device ('auto' -> bf16
    where the hardware has it)."""
    if config.precision != "auto":
        return config.precision
    return "bf16" if device_type == "cuda" or (device_type == "cpu" and cpu_has_bf16()) \
        else "fp32"


def resolve_device(config: TrainConfig) -> str:
    """The torch device string for `config.device` ('auto' -> cuda if available)."""
    import torch

    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} requested but CUDA is not available")
    return config.device
