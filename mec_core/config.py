"""The one description of a pretraining run, shared by the CLI, the REST API and the worker.

Defaults follow the reference recipe of the paper (Sec. 3 and the official code) unless a
field says otherwise; fields that depend on the machine or the data default to `None`
("decide from the dataset / device") and are resolved by pure functions, never by mutating
the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

DatasetName = Literal["digits", "fashion-mnist", "cifar10", "imagefolder", "synthetic"]
BackboneName = Literal["convnet", "resnet18", "resnet50"]
MethodName = Literal["mec", "simclr", "byol", "simsiam", "barlow_twins", "vicreg"]
RecipeName = Literal["auto", "small", "imagenet"]
DATASETS: tuple[str, ...] = get_args(DatasetName)
# the datasets that read no directory (a data_dir given with one is refused: datafiles)
BUILT_IN = {"digits": "scikit-learn bundles it", "synthetic": "it is generated"}
# autocast precisions each kind of device runs (fp16 on a CPU: ~500x slower than fp32)
PRECISIONS = {"cpu": ("auto", "fp32", "bf16"), "cuda": ("auto", "fp32", "bf16", "fp16")}
BACKBONES: tuple[str, ...] = get_args(BackboneName)

# Side of each dataset's images; imagefolder images are resized to 224 by default.
NATIVE_SIZE = {"digits": 16, "fashion-mnist": 28, "cifar10": 32, "synthetic": 32,
               "imagefolder": 224}
# views that suit a dataset better than its recipe's (docs/science.md, "Digits"): filled in,
# like a recipe's fields, where the caller does not set them
DATASET_VIEWS = {"digits": {"hflip": False, "crop_min_scale": 0.5}}
SMALL_IMAGE_MAX = 64  # sides up to this use the small recipe and the ResNets' small stem
HOLDOUT = 1000  # the most held-out images the online monitor uses as its kNN queries
TAYLOR_RADIUS = 0.9  # default largest ||C||_2 that the MEC loss lets the Taylor series see
# Where each method's targets may come from, its own first: "ema" (a moving average of the
# student), "stop_grad" (the student's own projections, detached) or "none" (the other
# view's projections with their gradient). Only MEC's objective reads targets that may
# carry a gradient; BYOL's and SimSiam's stop it, and the contrastive and redundancy
# objectives compare the two views' projections and read no targets.
TEACHERS: dict[str, tuple[str, ...]] = {
    "mec": ("ema", "stop_grad", "none"), "byol": ("ema", "stop_grad"),
    "simsiam": ("stop_grad",), "simclr": ("none",), "barlow_twins": ("none",),
    "vicreg": ("none",),
}

# Named recipes: the values a run takes for the fields it does not set. "imagenet" is the
# paper's (the fields' own defaults); "small" was found by measurement on Fashion-MNIST
# (docs/science.md). The distortion follows d so that the entropy weight lambda*m = d/eps^2
# is the paper's 2048/64 = 32.
RECIPES: dict[str, dict[str, object]] = {
    "imagenet": {},
    "small": {"proj_dim": 512, "eps_sq": 16.0, "teacher_momentum": 0.99,
              "warmup_epochs": 1.0, "lambda_warmup_epochs": 1.0, "order": None,
              "feature_grid": 2},
}
# What a recipe sets for one method only: on short runs MEC learns faster with the
# teacher's weights shared (momentum 0, the paper's Table 5d), which BYOL cannot afford.
METHOD_RECIPES: dict[tuple[str, str], dict[str, object]] = {
    ("small", "mec"): {"teacher_momentum": 0.0},
}


class TrainConfig(BaseModel):
    """A MEC pretraining run (Liu et al., NeurIPS 2022, Eq. 3 with the reference recipe)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    method: MethodName = Field(
        "mec", description="Self-supervised objective: mec (the paper's), or one of the "
        "baselines simclr, byol, simsiam, barlow_twins, vicreg on the same backbone, views, "
        "trainer and evaluation.",
    )
    recipe: RecipeName = Field(
        "auto", description="Named defaults for the fields a run does not set: imagenet "
        "(the paper's recipe), small (measured for images up to 64 px, docs/science.md); "
        "auto: small when the image side is at most 64, else imagenet.",
    )

    # --- data -------------------------------------------------------------------------
    dataset: DatasetName = Field(
        "fashion-mnist", description="Training set by name (digits, fashion-mnist, cifar10, "
        "imagefolder, synthetic)."
    )
    data_dir: str | None = Field(
        None, description="Directory of the dataset (or dataset://NAME[/VERSION] for an "
        "uploaded one); default: the dataset's standard place where it has one "
        "(fashion-mnist: /usr/share/datasets/fashion-mnist); cifar10 and imagefolder need it; "
        "digits and synthetic read none (one given with them is refused)."
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
    augmentation: Literal["auto", "moco_v3", "small_gray", "small_plain", "small_color"] = Field(
        "auto", description="Two-view recipe: moco_v3 (the paper's), small_gray and "
        "small_plain (small grayscale images), small_color (small colour images, no blur); "
        "auto picks by the channels and the image size.",
    )
    crop_min_scale: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Smallest area of the random resized crop, as a fraction of the image; "
        "default: the augmentation's (0.2), 0.5 for digits (8 x 8 images: a fifth of one "
        "is a stroke).",
    )
    hflip: bool | None = Field(
        None, description="Mirror each view at random (p = 0.5, the paper's). Default: on, "
        "off for digits (a mirrored digit is another glyph or none).",
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
    feature_grid: int = Field(
        1, ge=1, le=8,
        description="The backbone's last feature map is average-pooled to a grid of this "
        "side and flattened, so the features are channels x grid^2 wide. 1: global average "
        "pooling (the paper's); the small recipe: 2, which keeps the coarse layout of small "
        "images (docs/science.md).",
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
    predictor: bool | None = Field(
        None, description="Use the predictor on the student (asymmetric). Off: the symmetric "
        "ablation of Table 5. Default: the method's (on for mec, byol, simsiam).",
    )
    teacher_momentum: float = Field(
        0.996, ge=0.0, lt=1.0,
        description="Base EMA momentum of the teacher, raised to 1 by a cosine schedule "
        "(paper: 0.996). 0 shares the student's weights (Table 5 ablation).",
    )
    teacher: Literal["ema", "stop_grad", "none"] | None = Field(
        None, description="Where the targets come from: ema (a moving average of the "
        "student, at teacher_momentum; momentum 0 is stop_grad), stop_grad (the student's "
        "own projections behind a stop-gradient) or none (mec only: no stop-gradient, the "
        "gradient reaches both branches, as in SimCLR). Default: the method's (ema for mec "
        "and byol, stop_grad for simsiam, none for the others).",
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
    taylor_radius: float | None = Field(
        TAYLOR_RADIUS, gt=0.0, lt=1.0,
        description="With a Taylor order: the largest ||C||_2 the series may see; a step "
        "whose C would pass it gets a lower lambda, so the series converges. null: keep "
        "lambda, as the reference code does (the series may then diverge).",
    )
    lambda_warmup_factor: float = Field(
        8.0, ge=1.0, le=1e4,
        description="lambda^-1 starts at this multiple of its final value and decreases "
        "linearly to it (paper code: 8).",
    )
    lambda_warmup_epochs: float = Field(
        10.0, ge=0.0, le=10_000,
        description="Length of the lambda^-1 warm-up in epochs, at most a tenth of the run "
        "(paper code: 10).",
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
        description="Linear learning-rate warm-up before the cosine decay, in epochs, at most a "
        "tenth of the run (paper: 10).",
    )

    # --- execution --------------------------------------------------------------------
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$",
        description="auto (CUDA when present), cpu, cuda or cuda:N.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Autocast precision of the network; the loss's matrix part and "
        "BatchNorm's statistics always run in float32. auto: bf16 on CUDA and on CPUs with bf16 "
        "instructions (AVX512-BF16 or AMX), else fp32; bf16 runs on any CPU (slower without "
        "those instructions); fp16 on CUDA only.",
    )
    channels_last: bool | None = Field(
        None, description="Use the channels_last memory format (faster convolutions with "
        "cuDNN and oneDNN); default: on."
    )
    processes: int = Field(
        1, ge=1, le=64,
        description="Processes that train the run together under torchrun (data parallel, "
        "one GPU each on a GPU host; gloo on CPUs); batch_size is global and divides among "
        "them. The platform's worker launches them; by hand, torchrun --nproc-per-node must "
        "match.",
    )
    nodes: int = Field(
        1, ge=1, le=64,
        description="Hosts that train the run together, `processes` on each (world size: "
        "nodes x processes; batch_size stays global). 1: one host, under torchrun; more: "
        "a Ray Train run on the platform's Ray cluster (MEC_RAY_ADDRESS).",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of data order, views and init.")
    checkpoint_every: int = Field(
        500, ge=1, le=100_000_000, description="Save a checkpoint every N steps (and at the end)."
    )
    log_every: int = Field(
        10, ge=1, le=100_000,
        description="Hand metrics to callbacks every N steps (one host sync per N steps).",
    )
    monitor_every: int | None = Field(
        None, ge=0, le=100_000_000,
        description="Every N steps, log the kNN top-1 of the current backbone on a held-out "
        "part of the training set (knn_top1) and the effective rank of its features "
        "(effective_rank); 0: off; default: 10 times per run.",
    )

    @field_validator("precision")
    @classmethod
    def _precision_runs_on_the_device(cls, precision: str, info: ValidationInfo) -> str:
        device = str(info.data.get("device", "auto")).split(":")[0]
        if device in PRECISIONS:
            check_precision(precision, device)
        return precision

    @model_validator(mode="after")
    def _batch_divides_among_processes(self) -> TrainConfig:
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size {self.batch_size} does not divide among "
                             f"{self.world_size} processes (nodes x processes); make it a "
                             "multiple of that")
        return self

    @property
    def world_size(self) -> int:
        """Processes of the run over all its nodes."""
        return self.nodes * self.processes

    @model_validator(mode="after")
    def _teacher_suits_the_method(self) -> TrainConfig:
        accepted = TEACHERS[self.method]
        if self.teacher is not None and self.teacher not in accepted:
            raise ValueError(f"teacher {self.teacher!r} does not apply to {self.method}; "
                             f"choose one of {', '.join(accepted)}")
        if self.teacher == "ema" and self.teacher_momentum == 0.0:
            raise ValueError("teacher 'ema' with teacher_momentum 0 is the student itself "
                             "(the small recipe sets 0 for mec): give teacher_momentum > 0, "
                             "or teacher stop_grad")
        return self

    @model_validator(mode="before")
    @classmethod
    def _apply_recipe(cls, data: object) -> object:
        """Fill the fields the caller did not give from the named recipe (resolved, so the
        stored config says which one ran and reloads unchanged)."""
        if not isinstance(data, dict):
            return data
        name = data.get("recipe", "auto")
        if name == "auto":  # a malformed dataset or size is the field validators' to report
            side, dataset = data.get("image_size"), data.get("dataset", "fashion-mnist")
            if not isinstance(side, int) or isinstance(side, bool):
                side = NATIVE_SIZE.get(dataset, 224) if isinstance(dataset, str) else 224
            name = "small" if side <= SMALL_IMAGE_MAX else "imagenet"
        if not isinstance(name, str) or name not in RECIPES:
            return data
        method = data.get("method", "mec")
        extra = METHOD_RECIPES.get((name, method), {}) if isinstance(method, str) else {}
        dataset = data.get("dataset")
        views = DATASET_VIEWS.get(dataset, {}) if isinstance(dataset, str) else {}
        return {**RECIPES[name], **extra, **views, **data, "recipe": name}


def stored_config(data: dict) -> TrainConfig:
    """A config as a checkpoint, an export, a job row or a science record stored it; those
    written before `feature_grid` existed pooled the last feature map globally, those
    written before `hflip` existed mirrored their views whatever the dataset, and those
    written before a data_dir given with a built-in dataset was refused had it ignored."""
    if data.get("dataset") in BUILT_IN:
        data = {**data, "data_dir": None}
    return TrainConfig(**{"feature_grid": 1, "hflip": True, **data})


def resolve_teacher(config: TrainConfig) -> str:
    """Where the run's targets come from: `config.teacher`, else the method's own; an EMA
    of momentum 0 is the student itself behind a stop-gradient (Table 5d)."""
    source = config.teacher or TEACHERS[config.method][0]
    if source == "ema" and config.teacher_momentum == 0.0:
        return "stop_grad"
    return source


def resolve_predictor(config: TrainConfig) -> bool:
    """Whether the run has a predictor: `config.predictor`, else the method's own."""
    from mec_core.methods import get_method  # it imports this module

    return get_method(config.method).predictor if config.predictor is None \
        else config.predictor


def image_size(config: TrainConfig) -> int:
    """Crop size: the configured one, else the dataset's native size (at least 16)."""
    return config.image_size or max(16, NATIVE_SIZE[config.dataset])


def small_images(config: TrainConfig) -> bool:
    """The run's images are small (side <= 64): small-image views and ResNet stem."""
    return image_size(config) <= SMALL_IMAGE_MAX


def small_stem(config: TrainConfig) -> bool:
    """Whether ResNets use the small-image stem: as configured, else for small images."""
    if config.small_stem is not None:
        return config.small_stem
    return small_images(config)


def channels_last(config: TrainConfig) -> bool:
    """Whether the network runs in the channels_last memory format: as configured, else on."""
    return config.channels_last is not False


def hflip(config: TrainConfig) -> bool:
    """Whether views are mirrored at random: as configured (or the dataset's), else on."""
    return config.hflip is not False


def monitor_every(config: TrainConfig, total_steps: int) -> int:
    """Steps between the monitor's checks: as configured (0: off), else 10 per run."""
    return config.monitor_every if config.monitor_every is not None else max(1, total_steps // 10)


def held_out(images: int) -> int:
    """How many of a training split's images the online monitor holds out as its kNN
    queries: the last tenth, at most HOLDOUT."""
    return min(HOLDOUT, images // 10)


def trained_images(config: TrainConfig, images: int) -> int:
    """How many of a training split's `images` a run trains on: less the monitor's
    held-out part, then at most train_limit."""
    if config.monitor_every != 0:
        images -= held_out(images)
    return images if config.train_limit is None else min(images, config.train_limit)


def resolved(config: TrainConfig, total_steps: int | None = None) -> dict:
    """The config as a run decides it (JSON values): the image size, stem and memory format
    it uses, whether it mirrors views, where its targets come from and whether it has a
    predictor, and monitor_every once the run's length in steps is known."""
    values = config.model_dump(mode="json") | {
        "image_size": image_size(config), "small_stem": small_stem(config),
        "channels_last": channels_last(config), "hflip": hflip(config),
        "teacher": resolve_teacher(config), "predictor": resolve_predictor(config)}
    if total_steps is not None:
        values["monitor_every"] = monitor_every(config, total_steps)
    return values


def cpu_has_bf16() -> bool:
    """The CPU computes in bfloat16 natively (AVX512-BF16 or AMX), as Linux reports it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_precision(precision: str, device_type: str) -> None:
    """ValueError, listing the supported ones, if this kind of device cannot run `precision`."""
    supported = PRECISIONS.get(device_type, PRECISIONS["cpu"])
    if precision not in supported:
        raise ValueError(f"{precision} is not supported on {device_type}; choose one of "
                         f"{', '.join(supported)}")


def resolve_precision(config: TrainConfig, device_type: str) -> str:
    """fp32, bf16 or fp16 for `config.precision` on this kind of device ('auto' -> bf16
    where the hardware has it); ValueError for one the device does not run."""
    check_precision(config.precision, device_type)
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
