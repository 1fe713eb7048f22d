"""The pretraining loop: one process, or many under torchrun (DDP).

Read top to bottom: `setup` builds a run once (data, views, network, optimizer,
schedules, where to resume), `train_step` is one optimizer step, `MetricsBuffer` keeps
metrics on the device until a flush, the `Checkpointer` writes and finds checkpoints,
and `train` is the loop that ties them together.

The loop knows nothing of databases or queues: the caller plugs in `Callbacks` for
metrics, checkpoints and cancellation. Data order and views are functions of
(seed, step), and checkpoints carry model, teacher, optimizer, step and RNG state, so a
resumed run continues with exactly the losses of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.profiler import record_function

from mec_core import distributed, schedule
from mec_core.allocator import keep_freed_memory
from mec_core.augment import Normalization, ViewRecipe, augment, recipe_for
from mec_core.checkpoint import Checkpointer, load
from mec_core.clock import StepClock
from mec_core.config import (
    TrainConfig,
    channels_last,
    hflip,
    image_size,
    monitor_every,
    resolve_device,
    resolve_precision,
    small_images,
)
from mec_core.data import ImageSet, load_dataset
from mec_core.loss import mec_lambda
from mec_core.methods import Hyper, Method, get_method
from mec_core.models import MECModel, ema_update
from mec_core.monitor import Monitor, holdout
from mec_core.optim import build_optimizer
from mec_core.system import SystemStats
from mec_core.writes import naming

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Interrupted(Exception):
    """The callbacks asked to abandon the step under way."""


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

    def on_checkpoint(self, path: Path, step: int) -> None: ...

    def should_stop(self, step: int) -> bool:
        return False

    def interrupt_requested(self) -> bool:
        """True to abandon the step under way at once (a cancel): asked before each module
        of a forward and as each gradient is computed, on a one-process run only (ranks
        must agree). The step's work is lost and no checkpoint is written for it."""
        return False


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    stopped: bool
    checkpoint: Path | None
    images_per_sec: float  # over the steps past the warm-up (all of them if none are)
    last: dict[str, float] = field(default_factory=dict)


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63 - 1)


class DataOrder:
    """Which rows of the training set a step (and this rank) takes: a permutation per
    epoch, a function of (seed, epoch) only."""

    def __init__(self, n: int, batch_size: int, seed: int, world: distributed.World) -> None:
        self.n, self.batch, self.seed, self.world = n, batch_size, seed, world
        self.local = batch_size // world.size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def rows(self, step: int, steps_per_epoch: int) -> torch.Tensor:
        epoch, i = divmod(step, steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(_step_seed(self.seed, -1 - epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        batch = self._perm[i * self.batch:(i + 1) * self.batch]
        return batch[self.world.rank * self.local:(self.world.rank + 1) * self.local]


@dataclass
class Run:
    """Everything a run needs, built once by `setup`."""

    config: TrainConfig
    world: distributed.World
    data: ImageSet
    images: torch.Tensor  # the training set on the device, uint8
    order: DataOrder
    norm: Normalization
    views: tuple[ViewRecipe, ViewRecipe]
    method: Method
    model: MECModel
    net: nn.Module  # the model, wrapped for DDP when there are several processes
    optimizer: torch.optim.Optimizer
    autocast: contextlib.AbstractContextManager
    scaler: torch.amp.GradScaler | None
    monitor: Monitor | None
    checkpointer: Checkpointer
    steps_per_epoch: int
    total: int
    start: int  # steps already done (resumed from a checkpoint)
    resumed_from: Path | None
    warm_lr: int
    warm_lam: int
    peak_lr: float
    lam: float


def _autocast(config: TrainConfig, device: torch.device):
    precision = resolve_precision(config, device.type)
    if precision == "fp32":
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return torch.autocast(device.type, dtype=dtype), scaler


def setup(config: TrainConfig, out: Path, resume: bool, keep_checkpoints: int = 3) -> Run:
    """Data, views, network, optimizer and schedules of a run; restored from the newest
    checkpoint under `out/checkpoints` when `resume`."""
    world = distributed.setup(resolve_device(config))
    device = world.device
    if device.type == "cpu":
        keep_freed_memory()
    if world.size != config.world_size:
        raise ValueError(f"the config asks for {config.world_size} process(es) "
                         f"({config.nodes} node(s) x {config.processes}) but {world.size} "
                         f"were started: launch with torchrun --nnodes={config.nodes} "
                         f"--nproc-per-node={config.processes}, or set nodes and processes")
    data = load_dataset(config.dataset, "train", config.data_dir, config.image_size)
    held_out = None
    if config.monitor_every != 0:  # held out of the whole split: train_limit keeps its meaning
        data, held_out = holdout(data)
    data = data.head(config.train_limit)
    steps_per_epoch = len(data) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(data)} training "
                         f"images of {config.dataset} (its train split less the online kNN's "
                         f"held-out tenth, and train_limit): set batch_size to at most "
                         f"{len(data)}")
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    norm = Normalization.fit(data.images, image_size(config))

    torch.manual_seed(config.seed)
    model = MECModel.from_config(config).to(device)
    if channels_last(config):
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    checkpointer = Checkpointer(out / "checkpoints", keep_checkpoints)
    resumed_from = checkpointer.latest() if resume else None
    start = 0
    if resumed_from is not None:
        state = load(resumed_from, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        # the CPU generator's state, loaded onto `device` with the rest of the checkpoint
        torch.set_rng_state(state["rng"]["torch"].cpu())
        start = int(state["step"])
    net: nn.Module = model
    if world.size > 1:
        net = nn.parallel.DistributedDataParallel(
            distributed.sync_batchnorm(model, device),
            device_ids=[device.index] if device.type == "cuda" else None)

    monitor = Monitor(data, held_out, norm, monitor_every(config, total), device) \
        if held_out else None
    autocast, scaler = _autocast(config, device)
    return Run(
        config=config, world=world, data=data, images=data.images.to(device),
        order=DataOrder(len(data), config.batch_size, config.seed, world), norm=norm,
        views=recipe_for(config.augmentation, data.channels, config.crop_min_scale,
                         small=small_images(config), hflip=hflip(config)),
        method=get_method(config.method), model=model, net=net, optimizer=optimizer,
        autocast=autocast, scaler=scaler, monitor=monitor, checkpointer=checkpointer,
        steps_per_epoch=steps_per_epoch, total=total, start=start, resumed_from=resumed_from,
        # warm-ups take at most a tenth of the run, so a short run is not all warm-up
        warm_lr=min(round(config.warmup_epochs * steps_per_epoch), total // 10),
        warm_lam=min(round(config.lambda_warmup_epochs * steps_per_epoch), total // 10),
        peak_lr=config.base_lr * config.batch_size / 256,
        lam=mec_lambda(config.batch_size, config.proj_dim, config.eps_sq))


def batch_views(run: Run, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two augmented views of this step's batch (this rank's share of it)."""
    m, offset = run.config.batch_size, run.world.rank * run.order.local
    with record_function("mec.augment"):
        rows = run.order.rows(step, run.steps_per_epoch)
        batch = run.images[rows.to(run.images.device)]
        gen = torch.Generator().manual_seed(_step_seed(run.config.seed, step))
        x1 = augment(batch, run.views[0], run.norm, gen, m, offset)
        x2 = augment(batch, run.views[1], run.norm, gen, m, offset)
        if channels_last(run.config):
            x1 = x1.contiguous(memory_format=torch.channels_last)
            x2 = x2.contiguous(memory_format=torch.channels_last)
    return x1, x2


def train_step(run: Run, x1: torch.Tensor, x2: torch.Tensor, step: int,
               clock: StepClock) -> dict[str, torch.Tensor | float]:
    """One optimizer step at `step` (steps done so far); returns its metrics, tensors
    left on the device. Marks the end of its forward, backward and optimizer phases."""
    config = run.config
    lr = schedule.learning_rate(step, run.total, run.warm_lr, run.peak_lr)
    lam_inv = schedule.lambda_inv(step, run.warm_lam, run.lam, config.lambda_warmup_factor)
    tau = schedule.teacher_momentum(step, run.total, config.teacher_momentum)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with record_function("mec.forward"), run.autocast:
        s1, s2, t1, t2 = run.net(x1, x2)
    with record_function("mec.loss"):
        out = run.method.objective(*(distributed.gather(t) for t in (s1, s2, t1, t2)),
                                   Hyper(1.0 / lam_inv, config.order, config.taylor_radius))
    clock.mark()
    run.optimizer.zero_grad(set_to_none=True)
    with record_function("mec.backward"):
        (out["loss"] if run.scaler is None else run.scaler.scale(out["loss"])).backward()
    clock.mark()
    with record_function("mec.optimizer"):
        if run.scaler is None:
            run.optimizer.step()
        else:
            run.scaler.step(run.optimizer)
            run.scaler.update()
    if run.model.teacher is not None:
        with record_function("mec.ema"):
            ema_update(run.model.teacher, run.model.encoder, tau)
    clock.mark()
    return {k: v.detach() for k, v in out.items()} | {"lr": lr} \
        | ({"lambda_inv": lam_inv} if config.method == "mec" else {}) \
        | ({"teacher_momentum": tau} if run.model.teacher is not None else {})


class MetricsBuffer:
    """Metrics of the steps since the last flush, kept on the device; `flush` moves them
    to the host in one sync, checks that they are finite, appends them to metrics.jsonl
    and hands them to the callbacks (rank 0). On resume, lines past the checkpoint go.

    The last record of a flush also carries the window's speed, from the clock's steps
    past the warm-up since the previous flush: `images_per_sec` (training steps only: the
    monitor, metric writes and checkpoints are not counted) and the mean seconds per step
    of each phase, `time_data`, `time_forward`, `time_backward`, `time_optimizer`; and (at
    most every `system.EVERY_S`, and at the last step) the system figures of rank 0's
    process and device (`mec_core.system`: `system_*`)."""

    def __init__(self, path: Path, keep_through: int, run: Run, callbacks: Callbacks,
                 clock: StepClock) -> None:
        self.path, self.run, self.callbacks, self.clock = path, run, callbacks, clock
        self.pending: list[tuple[int, int, dict[str, torch.Tensor | float], dict]] = []
        self.last: dict[str, float] = {}
        self.system = SystemStats(run.world.device) if run.world.is_main else None
        if run.world.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line)["step"] <= keep_through]
                with naming(path):
                    path.write_text("".join(line + "\n" for line in kept))

    def add(self, step: int, epoch: int, values: dict, host_values: dict[str, float]) -> None:
        self.pending.append((step, epoch, values, host_values))

    def flush(self, last_good: Path | None) -> None:
        """Raises TrainingDiverged on a non-finite value, naming `last_good` checkpoint."""
        if not self.pending:
            return
        names = list(self.pending[0][2])
        device = self.run.world.device
        table = torch.stack([torch.stack([torch.as_tensor(p[2][k], dtype=torch.float32,
                                                          device=device) for k in names])
                             for p in self.pending]).tolist()
        records = [StepMetrics(s, e, dict(zip(names, row)) | extra)
                   for (s, e, _, extra), row in zip(self.pending, table)]
        steps, phases = self.clock.window()
        if steps:
            records[-1].values["images_per_sec"] = \
                self.run.config.batch_size / max(sum(phases.values()), 1e-9)
            records[-1].values.update({f"time_{p}": v for p, v in phases.items()})
        if self.system is not None and (self.system.due() or records[-1].step == self.run.total):
            records[-1].values.update(self.system.read())
        self.pending.clear()
        for r in records:
            if not all(math.isfinite(v) for v in r.values.values()):
                where = f"the last good checkpoint is {last_good}" if last_good else \
                    "no checkpoint was saved before it"
                raise TrainingDiverged(f"loss is not finite at step {r.step} "
                                       f"({r.values}); {where}")
        self.last = records[-1].values
        if self.run.world.is_main:
            with naming(self.path), self.path.open("a") as f:
                for r in records:
                    f.write(json.dumps({"step": r.step, "epoch": r.epoch, **r.values}) + "\n")
            self.callbacks.on_metrics(records)


def save(run: Run, step: int, epoch: int, callbacks: Callbacks) -> Path | None:
    """Checkpoint the run at `step` (rank 0 writes, every rank waits); the path on rank 0."""
    path = None
    if run.world.is_main:
        path = run.checkpointer.save({
            "config": run.config.model_dump(mode="json"), "epoch": epoch,
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "normalization": dataclasses.asdict(run.norm),
            "rng": {"torch": torch.get_rng_state()}}, step)
        callbacks.on_checkpoint(path, step)
    if run.world.size > 1:
        torch.distributed.barrier()
    return path


def _interruptible(model: nn.Module, callbacks: Callbacks) -> list:
    """Hooks that raise Interrupted inside a step once `callbacks.interrupt_requested()`:
    before each module's forward, and as each parameter's gradient is computed, so a step
    of many seconds stops within about one layer's time."""
    def check(*_) -> None:
        if callbacks.interrupt_requested():
            raise Interrupted
    return [m.register_forward_pre_hook(check) for m in model.modules()] + \
        [p.register_hook(check) for p in model.parameters() if p.requires_grad]


def _agreed(run: Run, stop: bool) -> bool:
    """Every rank must leave the loop at the same step: stop if any rank stops."""
    if run.world.size == 1:
        return stop
    flag = torch.tensor([float(stop)], device=run.world.device)
    torch.distributed.all_reduce(flag)
    return bool(flag.item())


def train(config: TrainConfig, out_dir: str | Path, callbacks: Callbacks | None = None,
          resume: bool = True, keep_checkpoints: int = 3) -> TrainResult:
    """Pretrain; write checkpoints and metrics.jsonl under `out_dir`.

    With `resume`, continue from the newest complete checkpoint in `out_dir/checkpoints`.
    Raises TrainingDiverged on a NaN/inf loss (the newest checkpoint is the last good one).
    """
    callbacks = callbacks or Callbacks()
    out = Path(out_dir)
    run = setup(config, out, resume, keep_checkpoints)
    clock = StepClock(run.world.device)
    metrics = MetricsBuffer(out / "metrics.jsonl", run.start, run, callbacks, clock)
    log.info("rank %d of %d on %s: %s (%s) on %s, step %d of %d, %d steps per epoch%s",
             run.world.rank, run.world.size, run.world.device, config.method, config.backbone,
             config.dataset, run.start, run.total, run.steps_per_epoch,
             f", resumed from {run.resumed_from}" if run.resumed_from else "")
    if run.world.is_main:
        callbacks.on_start(run.start, run.total, run.steps_per_epoch)
    saved = run.resumed_from
    step, stopped = run.start, False
    run.net.train()
    started = time.perf_counter()
    hooks = _interruptible(run.model, callbacks) if run.world.size == 1 else []
    try:
        while step < run.total:
            epoch = step // run.steps_per_epoch
            clock.start()
            x1, x2 = batch_views(run, step)
            clock.mark()
            values = train_step(run, x1, x2, step, clock)
            step += 1
            observed = {}
            if run.monitor is not None and run.world.is_main and (
                    step == run.total or run.monitor.due(step, time.perf_counter() - started)):
                with record_function("mec.monitor"), run.autocast:
                    observed = run.monitor(run.model.encoder.backbone)
            metrics.add(step, epoch, values, observed)

            stop = _agreed(run, callbacks.should_stop(step))
            due = step % config.checkpoint_every == 0 or step == run.total or stop
            if due or step % run.steps_per_epoch == 0 or step % config.log_every == 0:
                metrics.flush(saved)  # before any checkpoint: none ever holds a NaN step
            if due:
                saved = save(run, step, epoch, callbacks) or saved
            if run.world.is_main and step % run.steps_per_epoch == 0:
                log.info("epoch %d done (step %d of %d): %s", epoch, step, run.total,
                         ", ".join(f"{k} {v:.4g}" for k, v in metrics.last.items()
                                   if not k.startswith("time_")))
            if stop and step < run.total:  # asked at the last step: it finished all the same
                log.info("stopped at step %d of %d", step, run.total)
                stopped = True
                break
    except Interrupted:  # the step under way is lost; the newest checkpoint stays as it is
        log.info("interrupted after step %d of %d", step, run.total)
        metrics.flush(saved)
        stopped = True
    finally:
        for hook in hooks:
            hook.remove()
    clock.window()
    speed = config.batch_size / max(clock.seconds_per_step(), 1e-9) if step > run.start else 0.0
    if not stopped:
        log.info("finished: %d steps, %.1f images/s", step, speed)
    return TrainResult(step, run.total, stopped, saved, speed, metrics.last)
