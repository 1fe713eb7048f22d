"""Training throughput: `mec train` (mec_core.train) against a straightforward baseline loop
with the same model, batch and objective, written the way the reference code does it.

    python bench/bench_train.py [--device cpu|cuda] [--size 32] [--backbone resnet18]
                                [--batch-size 256] [--steps 6] [--precision auto]
    python bench/bench_train.py --profile     # where the time of one step goes
    python bench/bench_train.py --scaling 64 128 256 512 1024   # images/s and peak memory
    python bench/bench_train.py --knobs 3    # the step's main cost under each variant

Baseline: torchvision PIL transforms per image in DataLoader worker processes (the MoCo v3
recipe), float32, no channels_last, the loss as a sum of explicit matrix powers (Eq. 3),
and the EMA teacher updated by a Python loop over parameters. Ours: mec_core.train as
`mec train` runs it (batched augmentation on the device, traces-only loss with a
hand-written backward, fused EMA, metrics kept on the device between flushes). Both train
on the same synthetic images; the first steps are a warm-up and are not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from PIL import ImageFilter, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from mec_core.config import TrainConfig
from mec_core.data import synthetic
from mec_core.loss import mec_lambda
from mec_core.models import MECModel
from mec_core.train import Callbacks, train

WARMUP = 2
PHASES = ("data", "augment", "forward", "loss", "backward", "optimizer", "ema")


# --- the baseline ----------------------------------------------------------------------
class Blur:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img):
        if torch.rand(()) >= self.p:
            return img
        sigma = float(torch.empty(()).uniform_(0.1, 2.0)) * img.size[0] / 224
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))


class Solarize:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img, 128) if torch.rand(()) < self.p else img


def moco_view(size: int, blur_p: float, solarize_p: float, mean, std):
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.2, 1.0)),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        Blur(blur_p), Solarize(solarize_p),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


class TwoViews(Dataset):
    def __init__(self, images: torch.Tensor, size: int) -> None:
        self.images = images  # uint8 N x C x H x W
        mean, std = [0.5] * 3, [0.25] * 3
        self.views = (moco_view(size, 1.0, 0.0, mean, std), moco_view(size, 0.1, 0.2, mean, std))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = transforms.functional.to_pil_image(self.images[i])
        return self.views[0](img), self.views[1](img)


def eq3_loss(p, z, lam: float, order: int = 4):
    """-(1/lam)/m * sum_k (-1)^(k+1)/k tr(C^k), C = lam p z^T, with explicit powers."""
    m = p.shape[0]
    c = lam * F.normalize(p, dim=1) @ F.normalize(z, dim=1).T
    power, total = c, torch.zeros_like(c)
    for k in range(1, order + 1):
        if k > 1:
            power = power @ c
        total = total + (-1) ** (k + 1) / k * power
    return -torch.trace(total) / (lam * m)


def baseline(config: TrainConfig, steps: int, device: torch.device, workers: int,
             phases: dict[str, float] | None = None) -> float:
    """Images/s of the straightforward loop over `steps` timed steps."""
    data = synthetic("train", n=max(2048, config.batch_size * (steps + WARMUP)),
                     size=config.image_size)
    loader = DataLoader(TwoViews(data.images, config.image_size), batch_size=config.batch_size,
                        shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = MECModel.from_config(config).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5)
    lam = mec_lambda(config.batch_size, config.proj_dim, config.eps_sq)
    batches = iter(loader)

    def tick(name, start):
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if phases is not None:
            phases[name] = phases.get(name, 0.0) + now - start
        return now

    for step in range(WARMUP + steps):
        if step == WARMUP:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            if phases is not None:
                phases.clear()
        t = time.perf_counter()
        x1, x2 = (x.to(device, non_blocking=True) for x in next(batches))
        t = tick("data", t)
        s1, s2, t1, t2 = model(x1, x2)
        t = tick("forward", t)
        loss = 0.5 * (eq3_loss(s1, t2.detach(), lam) + eq3_loss(s2, t1.detach(), lam))
        t = tick("loss", t)
        optimizer.zero_grad()
        loss.backward()
        t = tick("backward", t)
        optimizer.step()
        t = tick("optimizer", t)
        with torch.no_grad():
            for pt, ps in zip(model.teacher.parameters(), model.encoder.parameters()):
                pt.data = pt.data * 0.996 + ps.data * (1 - 0.996)
        tick("ema", t)
        print(f"baseline step {step}: loss {loss.item():.4f}", file=sys.stderr)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - start)


# --- ours ------------------------------------------------------------------------------
class Clock(Callbacks):
    """Times the steps after the warm-up (should_stop runs once after every step)."""

    def __init__(self, device: torch.device, last: int) -> None:
        self.device, self.last = device, last
        self.times: dict[int, float] = {}

    def should_stop(self, step: int) -> bool:
        if step in (WARMUP, self.last):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.times[step] = time.perf_counter()
        return False


def ours(config: TrainConfig, steps: int, device: torch.device) -> float:
    clock = Clock(device, WARMUP + steps)
    with tempfile.TemporaryDirectory() as out:
        train(config.model_copy(update={"max_steps": WARMUP + steps}), out, clock)
    return steps * config.batch_size / (clock.times[clock.last] - clock.times[WARMUP])


def profile_ours(config: TrainConfig, steps: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if config.device.startswith("cuda") else [])
    with tempfile.TemporaryDirectory() as out, profile(activities=activities) as prof:
        train(config.model_copy(update={"max_steps": steps}), out)
    table = prof.key_averages()
    phases = {e.key: e.cpu_time_total for e in table if e.key.startswith("mec.")}
    total = sum(phases.values())
    lines = [f"  {k[4:]:<10} {100 * v / total:5.1f}%" for k, v in
             sorted(phases.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines) + "\n" + table.table(sort_by="self_cpu_time_total", row_limit=12)


def knobs(config: TrainConfig, repeats: int) -> dict[str, dict]:
    """Images/s of the step's dominant part, the student's forward + backward over both
    views, under each variant of how it could run; the variants interleaved per repeat,
    each after one untimed warm-up step (whose seconds are reported: compile time)."""
    from mec_core.models import build_backbone

    m, size = config.batch_size, config.image_size
    variants = {
        "two views, channels_last, fp32 (ours)": dict(),
        "NCHW (contiguous) layout": dict(layout=torch.contiguous_format),
        "the two views as one batch of 2m": dict(joined=True),
        "bf16 autocast": dict(dtype=torch.bfloat16),
        "torch.compile (inductor)": dict(compiled=True),
    }
    nets, warm, rates = {}, {}, {name: [] for name in variants}
    views = [torch.randn(m, 3, size, size) for _ in range(2)]

    def step(name: str) -> float:
        v = variants[name]
        layout = v.get("layout", torch.channels_last)
        xs = [x.contiguous(memory_format=layout) for x in views]
        if v.get("joined"):
            xs = [torch.cat(xs)]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=v.get("dtype", torch.float32),
                            enabled="dtype" in v):
            for x in xs:
                nets[name](x).float().square().mean().backward()
        return time.perf_counter() - start

    for name, v in variants.items():
        torch.manual_seed(0)
        net = build_backbone(config.backbone, small_stem=size <= 64)[0].to(
            memory_format=v.get("layout", torch.channels_last))
        nets[name] = torch.compile(net) if v.get("compiled") else net
        warm[name] = step(name)
    for r in range(repeats):
        for name in variants if r % 2 == 0 else reversed(list(variants)):
            rates[name].append(m / step(name))
    return {name: {"median": statistics.median(v), "min": min(v), "max": max(v),
                   "warmup_seconds": warm[name]} for name, v in rates.items()}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scaling(args, batches: list[int]) -> list[dict]:
    """Each batch size in a fresh process, for a clean peak-memory reading."""
    rows = []
    for b in batches:
        cmd = [sys.executable, __file__, "--only-ours", "--json", "--batch-size", str(b),
               "--steps", str(args.steps), "--size", str(args.size), "--backbone",
               args.backbone, "--device", args.device, "--precision", args.precision]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.splitlines()[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--scaling", type=int, nargs="*")
    parser.add_argument("--knobs", type=int, metavar="REPEATS",
                        help="time the student's forward + backward under each variant "
                             "(layout, batching of the views, bf16, torch.compile)")
    parser.add_argument("--only-ours", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    config = TrainConfig(dataset="synthetic", image_size=args.size, backbone=args.backbone,
                         batch_size=args.batch_size, train_limit=None, epochs=10_000,
                         proj_dim=2048, device=args.device, precision=args.precision,
                         log_every=20, checkpoint_every=100_000)
    head = (f"{args.backbone} (small stem: {args.size <= 64}), {args.size} px, batch "
            f"{args.batch_size}, {args.device}, torch threads {torch.get_num_threads()}, "
            f"{os.cpu_count()} CPUs")
    if args.scaling:
        print(head)
        print(f"{'batch':>6} {'img/s':>8} {'peak MB':>9}")
        for r in scaling(args, args.scaling):
            print(f"{r['batch']:>6} {r['ours']:>8.1f} {r['peak_mb']:>9.0f}")
        return
    if args.knobs:
        print(head)
        print(f"{'variant':<40} {'img/s':>7} {'range':>13} {'warm-up s':>9}")
        for name, r in knobs(config, args.knobs).items():
            print(f"{name:<40} {r['median']:>7.1f} {r['min']:>6.1f}–{r['max']:<6.1f} "
                  f"{r['warmup_seconds']:>9.1f}")
        return
    if args.profile:
        print(head)
        print(profile_ours(config, WARMUP + args.steps))
        phases: dict[str, float] = {}
        baseline(config, args.steps, device, args.workers, phases)
        total = sum(phases.values())
        print("baseline phases:\n" + "\n".join(f"  {k:<10} {100 * v / total:5.1f}%"
                                              for k, v in phases.items()))
        return
    rate = ours(config, args.steps, device)
    result = {"batch": args.batch_size, "ours": rate, "peak_mb": peak_memory_mb(device)}
    if not args.only_ours:
        result["baseline"] = baseline(config, args.steps, device, args.workers)
    if args.json:
        print(json.dumps(result))
        return
    print(head)
    print(f"{'loop':<10} {'img/s':>8}")
    if "baseline" in result:
        print(f"{'baseline':<10} {result['baseline']:>8.1f}")
    print(f"{'ours':<10} {rate:>8.1f}")
    if "baseline" in result:
        print(f"speed-up {rate / result['baseline']:.2f}x")


if __name__ == "__main__":
    main()
