"""Training speed against the peer a careful user would pick: lightly's BYOL loop.

    python bench/bench_peer.py [--size 32] [--backbone resnet18] [--batch-size 256]
                               [--steps 5] [--repeats 3] [--precision auto]
                               [--loops mec byol lightly lightly-tuned] [--json]
    python bench/bench_peer.py --profile lightly-tuned   # its top operators (torch.profiler)
    python bench/bench_peer.py --report docs/performance/training/peer_*.json   # recorded runs

Loops, each at the same backbone (torchvision's ResNet, the small-image stem at 64 px and
below), image size, batch, precision and torch thread count:

- `mec`: `mec train` (mec_core.train) with its defaults for the image size;
- `byol`: the same trainer with `method: byol` (an EMA teacher, so the objective and the
  number of forward passes equal lightly's);
- `lightly`: BYOL written as lightly 1.6's example writes it (its BYOLTransform in
  DataLoader worker processes, float32, four forwards per step);
- `lightly-tuned`: the same with channels_last and the run's autocast (bf16 on CPUs that
  compute it natively), about five lines more.

Every (repeat, loop) runs in a fresh process, the loops interleaved within each repeat, so
that a noisy neighbour hits every loop alike; images/s counts the steps after `--warmup`.
Prints the median and the range over repeats, and each loop's median seconds per step in
data (waiting for the loader, or our augmentation), forward (with the loss), backward and
optimizer (with the teacher's update). lightly is a bench-only extra:
`pip install -e .[bench]`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import records
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mec_core.clock import PHASES, WARMUP_STEPS
from mec_core.config import TrainConfig, resolve_precision, small_stem
from mec_core.data import synthetic
from mec_core.models import build_backbone
from mec_core.train import Callbacks, train

LOOPS = ("mec", "byol", "lightly", "lightly-tuned")


def _config(args, method: str) -> TrainConfig:
    return TrainConfig(method=method, dataset="synthetic", image_size=args.size,
                       backbone=args.backbone, batch_size=args.batch_size, train_limit=None,
                       epochs=10_000, precision=args.precision, device=args.device,
                       max_steps=args.warmup + args.steps, monitor_every=0,
                       log_every=10_000, checkpoint_every=100_000)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


class _Clock(Callbacks):
    """Time at the end of the warm-up and of the last step (should_stop runs after each)."""

    def __init__(self, warmup: int, last: int, device: torch.device) -> None:
        self.marks, self.times, self.device = (warmup, last), {}, device

    def should_stop(self, step: int) -> bool:
        if step in self.marks:
            self.times[step] = _now(self.device)
        return False


def run_ours(args, method: str) -> tuple[float, dict[str, float]]:
    config = _config(args, method)
    clock = _Clock(args.warmup, args.warmup + args.steps, torch.device(args.device))
    with tempfile.TemporaryDirectory() as out:
        result = train(config, out, clock)
    rate = args.steps * args.batch_size / (clock.times[clock.marks[1]] - clock.times[args.warmup])
    return rate, {p: result.last[f"time_{p}"] for p in PHASES}


class _PILImages(Dataset):
    """Synthetic images as PIL images through lightly's transform, as a user's dataset."""

    def __init__(self, images: torch.Tensor, transform) -> None:
        from torchvision.transforms.functional import to_pil_image

        self.to_pil, self.images, self.transform = to_pil_image, images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.to_pil(self.images[i])), 0


class _LightlyBYOL(nn.Module):
    """lightly's BYOL example model, on our backbone (same stem and pooling)."""

    def __init__(self, backbone: nn.Module, features: int) -> None:
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(features, 4096, 256)
        self.prediction_head = BYOLPredictionHead(256, 4096, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(1)))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(1)).detach()


def run_lightly(args, tuned: bool) -> tuple[float, dict[str, float]]:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.utils import update_momentum
    from lightly.transforms.byol_transform import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
    )

    config = _config(args, "byol")
    device = torch.device(args.device)
    small = small_stem(config)
    transform = BYOLTransform(BYOLView1Transform(input_size=args.size, gaussian_blur=0.0),
                              BYOLView2Transform(input_size=args.size, gaussian_blur=0.0))
    data = synthetic("train", n=args.batch_size * (args.warmup + args.steps), size=args.size)
    loader = DataLoader(_PILImages(data.images, transform), batch_size=args.batch_size,
                        shuffle=True, drop_last=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0, pin_memory=device.type == "cuda")
    backbone, features = build_backbone(args.backbone, small_stem=small)
    model = _LightlyBYOL(backbone, features).to(device)
    autocast = torch.autocast(device.type, enabled=False)
    if tuned:
        model = model.to(memory_format=torch.channels_last)
        precision = resolve_precision(config, device.type)
        if precision == "fp16":
            sys.exit("the lightly loops take fp32 or bf16 (fp16 would need a GradScaler)")
        if precision == "bf16":
            autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    start, marks = None, []
    batches = iter(loader)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start = _now(device)
        marks.append([_now(device)])
        (x0, x1), _ = next(batches)
        x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
        marks[-1].append(_now(device))
        update_momentum(model.backbone, model.backbone_momentum, m=0.99)
        update_momentum(model.projection_head, model.projection_head_momentum, m=0.99)
        if tuned:
            x0 = x0.contiguous(memory_format=torch.channels_last)
            x1 = x1.contiguous(memory_format=torch.channels_last)
        with autocast:
            p0, z0 = model(x0), model.forward_momentum(x0)
            p1, z1 = model(x1), model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        marks[-1].append(_now(device))
        loss.backward()
        marks[-1].append(_now(device))
        optimizer.step()
        optimizer.zero_grad()
        float(loss)  # lightly's examples log the loss every step
        marks[-1].append(_now(device))
    rate = args.steps * args.batch_size / (_now(device) - start)
    timed = marks[args.warmup:]
    return rate, {p: statistics.mean(m[i + 1] - m[i] for m in timed)
                  for i, p in enumerate(PHASES)}


def run_one(args) -> tuple[float, dict[str, float]]:
    if args.one in ("mec", "byol"):
        return run_ours(args, args.one)
    return run_lightly(args, tuned=args.one == "lightly-tuned")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--backbone", default="resnet18",
                        choices=("convnet", "resnet18", "resnet50"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="lightly's DataLoader workers (default: one per CPU)")
    parser.add_argument("--loops", nargs="+", default=list(LOOPS), choices=LOOPS)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", choices=LOOPS,
                        help="run this loop once under torch.profiler; print its top operators")
    parser.add_argument("--report", nargs="+", metavar="JSON",
                        help="print the tables of recorded runs (--json output) and exit")
    parser.add_argument("--one", choices=LOOPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        print("\n\n".join(report(json.loads(Path(f).read_text())) for f in args.report))
        return
    if args.warmup + args.steps <= WARMUP_STEPS:
        parser.error(f"--warmup + --steps must exceed the trainer's {WARMUP_STEPS} warm-up "
                     "steps, which its phase times leave out")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        args.one = args.profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run_one(args)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        return
    if args.one:
        rate, phases = run_one(args)
        print(json.dumps({"loop": args.one, "images_per_sec": rate, "phases": phases}))
        return
    rates: dict[str, list[float]] = {loop: [] for loop in args.loops}
    phases: dict[str, list[dict[str, float]]] = {loop: [] for loop in args.loops}
    passed = [a for a in sys.argv[1:] if a != "--json"]
    for r in range(args.repeats):
        for loop in args.loops if r % 2 == 0 else reversed(args.loops):
            done = subprocess.run([sys.executable, __file__, *passed, "--one", loop],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{loop} failed:\n{done.stderr[-3000:]}")
            one = json.loads(done.stdout.splitlines()[-1])
            rates[loop].append(one["images_per_sec"])
            phases[loop].append(one["phases"])
            print(f"repeat {r + 1} {loop}: {rates[loop][-1]:.1f} images/s", file=sys.stderr)
    config = _config(args, "mec")
    summary = {
        "host": records.host(), "backbone": args.backbone, "size": args.size,
        "batch": args.batch_size,
        "precision": resolve_precision(config, torch.device(args.device).type),
        "device": args.device, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "steps": args.steps, "warmup": args.warmup,
        "loops": {loop: {"median": statistics.median(v), "min": min(v), "max": max(v),
                         "runs": v, "phase_seconds": {p: statistics.median(r[p] for r in
                                                                           phases[loop])
                                                      for p in PHASES}}
                  for loop, v in rates.items()}}
    if args.json:
        print(json.dumps(summary))
        return
    print(report(summary))


def report(summary: dict) -> str:
    """The table of a run's summary (what --json prints); runs recorded before the phase
    split have no phase columns."""
    loops = summary["loops"]
    repeats = max(len(s["runs"]) for s in loops.values())
    lines = [f"{summary['backbone']}, {summary['size']} px, batch {summary['batch']}, precision "
             f"{summary['precision']}, {summary['threads']} torch threads, {summary['cpus']} "
             f"CPUs, {summary['steps']} timed steps after {summary['warmup']}, {repeats} repeats",
             f"{'loop':<14} {'median img/s':>12} {'range':>15}   seconds per step: "
             + " ".join(f"{p:>9}" for p in PHASES)]
    for loop, s in loops.items():
        split = s.get("phase_seconds")
        lines.append(f"{loop:<14} {s['median']:>12.1f} {s['min']:>7.1f}–{s['max']:<7.1f}"
                     + (" " * 21 + " ".join(f"{split[p]:>9.3f}" for p in PHASES) if split
                        else ""))
    if "lightly-tuned" in loops and "mec" in loops:
        lines.append(f"mec / lightly-tuned: "
                     f"{loops['mec']['median'] / loops['lightly-tuned']['median']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
