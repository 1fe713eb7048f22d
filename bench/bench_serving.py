"""Embedding endpoint under concurrent clients: TorchServe against the same model called
in-process, at several concurrencies, with errors, throughput and latency percentiles.

    python bench/bench_serving.py [--concurrency 1 8 32] [--duration 20]
                                  [--workers 1] [--batch-size 8] [--max-batch-delay-ms 20]

The model is resnet18 with the small-image stem on 32 px RGB images (as `mec train
--dataset cifar10`), packaged by `serving.package` and served by a real TorchServe with
token authorization. The clients are ApacheBench's (`ab`, Debian: apache2-utils), each
sending one PNG per request (raw body) on a keep-alive connection, back to back.
In-process: the same Service (decode + forward + answer) on batches of
min(concurrency, batch size) images, back to back, no server: the ceiling that
TorchServe's overhead is measured against.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mec_core import checkpoint
from mec_core.config import TrainConfig
from mec_core.data import synthetic
from mec_core.train import train
from serving.package import package
from serving.service import Service
from serving.torchserve import LocalTorchServe, unused_port


def pngs(n: int) -> list[bytes]:
    out = []
    for image in synthetic("test", n=n, size=32).images:
        buf = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def build(root: Path) -> tuple[Path, Path]:
    """A resnet18 checkpoint (one step on synthetic 32 px images) and its .mar files."""
    config = TrainConfig(dataset="synthetic", image_size=32, backbone="resnet18", batch_size=16,
                         max_steps=1, epochs=1, train_limit=64, proj_dim=256, log_every=1)
    train(config, root / "run")
    ckpt = checkpoint.latest(root / "run" / "checkpoints")
    package(ckpt, root / "store", "bench", gallery_limit=256)
    return ckpt, root / "store"


def stats(latencies: list[float], errors: int, seconds: float) -> dict:
    lat = np.array(latencies) * 1e3
    return {"requests": len(latencies), "errors": errors,
            "throughput": round(len(latencies) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1)}


def clients(url: str, key: str, image: Path, concurrency: int, seconds: float) -> dict:
    """ApacheBench: `concurrency` keep-alive clients posting `image` for `seconds`. A C
    client, so that the load generator takes little of the CPU the server runs on."""
    out = subprocess.run(
        ["ab", "-k", "-q", "-s", "60", "-t", str(seconds), "-n", "10000000", "-c",
         str(concurrency), "-p", str(image), "-T", "image/png", "-H",
         f"Authorization: Bearer {key}", f"{url}/predictions/bench"],
        capture_output=True, text=True, check=True).stdout

    def field(pattern: str, default: str = "0") -> float:
        found = re.search(pattern, out, re.MULTILINE)
        return float(found.group(1) if found else default)

    # answers differ in length (the floats differ), which ab counts as "Length" failures
    errors = sum(field(rf"{what}: (\d+)") for what in ("Connect", "Receive", "Exceptions")) \
        + field(r"^Non-2xx responses:\s+(\d+)")
    return {"requests": int(field(r"^Complete requests:\s+(\d+)")), "errors": int(errors),
            "throughput": field(r"^Requests per second:\s+([\d.]+)"),
            "p50_ms": field(r"^\s+50%\s+(\d+)"), "p99_ms": field(r"^\s+99%\s+(\d+)")}


def in_process(service: Service, images: list[bytes], batch: int, seconds: float) -> dict:
    latencies = []
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    i = 0
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        requests = [{"body": images[(i + j) % len(images)]} for j in range(batch)]
        answers = service.run([service.parse(r) for r in requests])
        assert all("embeddings" in a for a in answers)
        latencies += [time.perf_counter() - t] * batch
        i += batch
    return stats(latencies, 0, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay-ms", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mec-bench-serving-"))
    _, store = build(root)
    images = pngs(64)
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        with zipfile.ZipFile(store / "bench.mar") as z:
            z.extractall(export)
        service = Service(export, "embed")
        service.run([service.parse({"body": images[0]})])  # warm-up
        direct = {c: in_process(service, images, min(c, args.batch_size), args.duration / 2)
                  for c in args.concurrency}
    ts = LocalTorchServe(root / "ts", store, *(unused_port() for _ in range(3))).start()
    try:
        ts.management().register("bench.mar", workers=args.workers, batch_size=args.batch_size,
                                 max_batch_delay_ms=args.max_batch_delay_ms)
        key = ts.keys().inference
        image = root / "image.png"
        image.write_bytes(images[0])
        clients(ts.inference_url, key, image, 4, 2)  # warm-up
        served = {c: clients(ts.inference_url, key, image, c, args.duration)
                  for c in args.concurrency}
    finally:
        ts.stop()
    rows = [{"concurrency": c, "torchserve": served[c], "in_process": direct[c],
             "overhead": round(1 - served[c]["throughput"] / direct[c]["throughput"], 3)}
            for c in args.concurrency]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"resnet18 small stem, 32 px PNG, torch threads {torch.get_num_threads()}; "
          f"TorchServe workers={args.workers} batch_size={args.batch_size} "
          f"max_batch_delay={args.max_batch_delay_ms} ms; {args.duration:.0f} s per point")
    print(f"{'clients':>7} | {'TS img/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} | "
          f"{'direct img/s':>12} {'p50 ms':>7} | {'overhead':>8}")
    for r in rows:
        s, d = r["torchserve"], r["in_process"]
        print(f"{r['concurrency']:>7} | {s['throughput']:>8} {s['p50_ms']:>7} {s['p99_ms']:>7} "
              f"{s['errors']:>6} | {d['throughput']:>12} {d['p50_ms']:>7} | "
              f"{100 * r['overhead']:>7.1f}%")


if __name__ == "__main__":
    main()
