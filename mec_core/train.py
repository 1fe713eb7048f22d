"""The MEC pretraining loop: one process, or many under torchrun (DDP).

The loop knows nothing of databases or queues: the caller plugs in `Callbacks` for
metrics, epochs, checkpoints and cancellation. Data order and views are functions of
(seed, step), and checkpoints carry model, teacher, optimizer, step and RNG state, so a
resumed run continues with exactly the losses of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.profiler import record_function

from mec_core import checkpoint, distributed, schedule
from mec_core.augment import Normalization, augment, recipe_for
from mec_core.config import (
    TrainConfig,
    image_size,
    resolve_device,
    resolve_precision,
    small_images,
)
from mec_core.data import load_dataset
from mec_core.loss import mec_lambda
from mec_core.methods import Hyper, get_method
from mec_core.models import MECModel, ema_update
from mec_core.monitor import Monitor, holdout
from mec_core.optim import build_optimizer

CHECKPOINT_FORMAT = "mec-checkpoint/1"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class StepMetrics:
    """Metrics of one optimizer step (`step` counts completed steps, from 1)."""

    step: int
    epoch: int
    values: dict[str, float]


class Callbacks:
    """Hooks of the training loop; override what you need. They run on rank 0 only,
    except `should_stop`, which runs everywhere (its answer is agreed across ranks)."""

    def on_start(self, start_step: int, total_steps: int, steps_per_epoch: int) -> None: ...

    def on_metrics(self, records: list[StepMetrics]) -> None: ...

    def on_epoch_end(self, epoch: int, step: int) -> None: ...

    def on_checkpoint(self, path: Path, step: int) -> None: ...

    def should_stop(self, step: int) -> bool:
        return False


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    stopped: bool
    checkpoint: Path | None
    images_per_sec: float
    last: dict[str, float] = field(default_factory=dict)


def _autocast(config: TrainConfig, device: torch.device):
    precision = resolve_precision(config, device.type)
    if precision == "fp32":
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return torch.autocast(device.type, dtype=dtype), scaler


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63 - 1)


class _MetricsFile:
    """metrics.jsonl: one JSON object per step; on resume, lines past the checkpoint go."""

    def __init__(self, path: Path, keep_through: int) -> None:
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= keep_through]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, records: list[StepMetrics]) -> None:
        with self.path.open("a") as f:
            for r in records:
                f.write(json.dumps({"step": r.step, "epoch": r.epoch, **r.values}) + "\n")


def train(config: TrainConfig, out_dir: str | Path, callbacks: Callbacks | None = None,
          resume: bool = True, keep_checkpoints: int = 3) -> TrainResult:
    """Pretrain with MEC; write checkpoints and metrics.jsonl under `out_dir`.

    With `resume`, continue from the newest complete checkpoint in `out_dir/checkpoints`.
    Raises TrainingDiverged on a NaN/inf loss (the newest checkpoint is the last good one).
    """
    callbacks = callbacks or Callbacks()
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    world = distributed.setup(resolve_device(config))
    device = world.device
    if config.batch_size % world.size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                         f"{world.size} processes")
    local_batch = config.batch_size // world.size

    data = load_dataset(config.dataset, "train", config.data_dir, config.image_size)
    monitor_every = config.monitor_every
    held_out = None
    if monitor_every != 0:  # held out of the whole split, so train_limit keeps its meaning
        data, held_out = holdout(data)
    data = data.head(config.train_limit)
    steps_per_epoch = len(data) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(data)} training "
                         f"images of {config.dataset}")
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    if monitor_every is None:
        monitor_every = max(1, total // 10)
    norm = Normalization.fit(data.images, image_size(config))
    views = recipe_for(config.augmentation, data.channels, config.crop_min_scale,
                       small=small_images(config))
    images = data.images.to(device)

    torch.manual_seed(config.seed)
    method = get_method(config.method)
    model = MECModel.from_config(config).to(device)
    channels_last = config.channels_last is not False  # None (default): on
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)

    start = 0
    last_path = checkpoint.latest(ckpt_dir) if resume else None
    if last_path is not None:
        state = checkpoint.load(last_path, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        start = int(state["step"])
    net: nn.Module = model
    if world.size > 1:
        net = nn.parallel.DistributedDataParallel(
            distributed.sync_batchnorm(model, device),
            device_ids=[device.index] if device.type == "cuda" else None)

    m, d = config.batch_size, config.proj_dim
    lam = mec_lambda(m, d, config.eps_sq)
    # warm-ups take at most a tenth of the run, so a short run is not all warm-up
    warm_lr = min(round(config.warmup_epochs * steps_per_epoch), total // 10)
    warm_lam = min(round(config.lambda_warmup_epochs * steps_per_epoch), total // 10)
    peak_lr = config.base_lr * config.batch_size / 256
    autocast, scaler = _autocast(config, device)
    monitor = Monitor(data, held_out, norm, monitor_every, device) if held_out else None
    metrics_file = _MetricsFile(out / "metrics.jsonl", start) if world.is_main else None
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        callbacks.on_start(start, total, steps_per_epoch)

    # (step, epoch, values kept on the device until the next flush, host floats)
    pending: list[tuple[int, int, dict[str, torch.Tensor | float], dict[str, float]]] = []
    last: dict[str, float] = {}
    saved: Path | None = last_path
    tick, tick_step = time.perf_counter(), start

    def flush() -> None:
        """Move pending metrics to the host (one sync), check them, hand them on."""
        nonlocal tick, tick_step, last
        if not pending:
            return
        names = list(pending[0][2])
        table = torch.stack([torch.stack([torch.as_tensor(p[2][k], dtype=torch.float32,
                                                          device=device) for k in names])
                             for p in pending]).tolist()
        now = time.perf_counter()
        speed = (pending[-1][0] - tick_step) * config.batch_size / max(now - tick, 1e-9)
        tick, tick_step = now, pending[-1][0]
        records = [StepMetrics(s, e, dict(zip(names, row)) | extra)
                   for (s, e, _, extra), row in zip(pending, table)]
        records[-1].values["images_per_sec"] = speed
        pending.clear()
        for r in records:
            if not all(math.isfinite(v) for v in r.values.values()):
                where = f"the last good checkpoint is {saved}" if saved else \
                    "no checkpoint was saved before it"
                raise TrainingDiverged(f"loss is not finite at step {r.step} "
                                       f"({r.values}); {where}")
        last = records[-1].values
        if world.is_main:
            metrics_file.write(records)
            callbacks.on_metrics(records)

    def save(step: int, epoch: int) -> None:
        nonlocal saved
        if world.is_main:
            state = {"format": CHECKPOINT_FORMAT, "config": config.model_dump(mode="json"),
                     "step": step, "epoch": epoch, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(),
                     "normalization": dataclasses.asdict(norm),
                     "rng": {"torch": torch.get_rng_state()}}
            saved = checkpoint.save_atomic(state, checkpoint.step_path(ckpt_dir, step))
            checkpoint.prune(ckpt_dir, keep_checkpoints)
            callbacks.on_checkpoint(saved, step)
        if world.size > 1:
            torch.distributed.barrier()

    net.train()
    started = time.perf_counter()
    perm, perm_epoch = None, -1
    stopped = False
    step = start
    while step < total:
        epoch, i = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:  # data order is a function of (seed, epoch)
            gen = torch.Generator().manual_seed(_step_seed(config.seed, -1 - epoch))
            perm, perm_epoch = torch.randperm(len(data), generator=gen), epoch
        rows = perm[i * m:(i + 1) * m][world.rank * local_batch:(world.rank + 1) * local_batch]
        with record_function("mec.augment"):
            batch = images[rows.to(device)]
            gen = torch.Generator().manual_seed(_step_seed(config.seed, step))
            x1 = augment(batch, views[0], norm, gen, m, world.rank * local_batch)
            x2 = augment(batch, views[1], norm, gen, m, world.rank * local_batch)
            if channels_last:
                x1 = x1.contiguous(memory_format=torch.channels_last)
                x2 = x2.contiguous(memory_format=torch.channels_last)

        lr = schedule.learning_rate(step, total, warm_lr, peak_lr)
        lam_inv = schedule.lambda_inv(step, warm_lam, lam, config.lambda_warmup_factor)
        tau = schedule.teacher_momentum(step, total, config.teacher_momentum)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with record_function("mec.forward"), autocast:
            s1, s2, t1, t2 = net(x1, x2)
        with record_function("mec.loss"):
            out_ = method.objective(*(distributed.gather(t) for t in (s1, s2, t1, t2)),
                                    Hyper(1.0 / lam_inv, config.order, config.taylor_radius))
        optimizer.zero_grad(set_to_none=True)
        with record_function("mec.backward"):
            (out_["loss"] if scaler is None else scaler.scale(out_["loss"])).backward()
        with record_function("mec.optimizer"):
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
        if model.teacher is not None:
            with record_function("mec.ema"):
                ema_update(model.teacher, model.encoder, tau)
        step += 1
        observed = {}
        elapsed = time.perf_counter() - started
        if monitor is not None and world.is_main and (monitor.due(step, elapsed) or
                                                      step == total):
            with record_function("mec.monitor"), autocast:
                observed = monitor(model.encoder.backbone)
        scalars = {"lr": lr} | ({"lambda_inv": lam_inv} if config.method == "mec" else {}) \
            | ({"teacher_momentum": tau} if model.teacher is not None else {})
        pending.append((step, epoch, {k: v.detach() for k, v in out_.items()} | scalars,
                        observed))

        stop = callbacks.should_stop(step)
        if world.size > 1:  # every rank must leave the loop at the same step
            flag = torch.tensor([float(stop)], device=device)
            torch.distributed.all_reduce(flag)
            stop = bool(flag.item())
        end_of_epoch = step % steps_per_epoch == 0
        due = step % config.checkpoint_every == 0 or step == total or stop
        if due or end_of_epoch or step % config.log_every == 0:
            flush()  # before any checkpoint: a saved checkpoint never holds a NaN step
        if due:
            save(step, epoch)
        if end_of_epoch and world.is_main:
            callbacks.on_epoch_end(epoch, step)
        if stop:
            stopped = True
            break

    seconds = max(time.perf_counter() - started, 1e-9)
    return TrainResult(step, total, stopped, saved, (step - start) * m / seconds, last)
