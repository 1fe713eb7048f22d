"""Embedding endpoint under concurrent clients: TorchServe against the same model called
in-process, interleaved in rounds, with median and spread, and where the CPU went.

    python bench/bench_serving.py [--concurrency 1 8 32] [--rounds 5] [--seconds 6]
        [--workers N] [--batch-size N] [--max-batch-delay-ms 20]
        [--handler-threads N] [--netty-threads N] [--json]

The model is resnet18 with the small-image stem on 32 px RGB images (as `mec train
--dataset cifar10`), packaged by `serving.package` and served by a real TorchServe with
token authorization. The clients are ApacheBench's (`ab`, Debian: apache2-utils), each
sending one PNG per request (raw body) on a keep-alive connection, back to back.
In-process: the same Service (decode + forward + answer) on batches of
min(concurrency, 8) images with every core, back to back, no server: the ceiling that
TorchServe's overhead is measured against, the same whatever TorchServe's settings.

Both sides are warmed up alike, then measured in `rounds` rounds, each point in-process
and served back to back (the order alternating between rounds), so that a machine that
gets slower or faster during the run moves both. The overhead of a round is
1 - served / in-process; the figure is the median over the rounds, with its range. The
torch threads of both sides are pinned to the same number and recorded, and so is the CPU
each process used while serving (TorchServe's Java frontend, its Python worker, the
clients), in cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import statistics
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from mec_core import checkpoint
from mec_core.config import TrainConfig
from mec_core.data import synthetic
from mec_core.train import train
from serving.package import package
from serving.service import Service
from serving.torchserve import LocalTorchServe, unused_ports, worker_plan

IN_PROCESS_BATCH = 8


def pngs(n: int) -> list[bytes]:
    out = []
    for image in synthetic("test", n=n, size=32).images:
        buf = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def build(root: Path) -> tuple[Path, Path]:
    """A resnet18 checkpoint (one step on synthetic 32 px images) and its .mar files.
    Global pooling (512-d embeddings), as in the recorded runs of docs/performance.md."""
    config = TrainConfig(dataset="synthetic", image_size=32, backbone="resnet18", batch_size=16,
                         max_steps=1, epochs=1, train_limit=64, proj_dim=256, log_every=1,
                         feature_grid=1)
    train(config, root / "run")
    ckpt = checkpoint.latest(root / "run" / "checkpoints")
    package(ckpt, root / "store", "bench", gallery_limit=256)
    return ckpt, root / "store"


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


class Served:
    """TorchServe's processes, split into the Java frontend and the Python workers, so
    that the CPU each takes while serving can be told apart."""

    def __init__(self, ts: LocalTorchServe) -> None:
        launcher = psutil.Process(ts.process.pid)
        every = [launcher, *launcher.children(recursive=True)]
        self.frontend = [p for p in every if p.name().startswith("java")]
        self.workers = [p for p in every if "model_service_worker" in " ".join(p.cmdline())]

    def cpu(self) -> dict[str, float]:
        return {"frontend": _cpu(self.frontend), "worker": _cpu(self.workers)}

    def settle(self, timeout: float = 30) -> None:
        """Wait until the workers are idle: requests the clients abandoned at the end of a
        measurement are still computed, and must not overlap the next one."""
        deadline = time.monotonic() + timeout
        last = _cpu(self.workers)
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = _cpu(self.workers)
            if now - last < 0.02:
                return
            last = now


def clients(url: str, key: str, image: Path, concurrency: int, seconds: float,
            served: Served | None = None) -> dict:
    """ApacheBench: `concurrency` keep-alive clients posting `image` for `seconds`; with
    `served`, also the cores each side used meanwhile (and it waits for the workers to be
    idle again before returning)."""
    before = served.cpu() if served else {}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(
        ["ab", "-k", "-q", "-s", "60", "-t", str(seconds), "-n", "10000000", "-c",
         str(concurrency), "-p", str(image), "-T", "image/png", "-H",
         f"Authorization: Bearer {key}", f"{url}/predictions/bench"],
        capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)

    def field(pattern: str, default: str = "0") -> float:
        found = re.search(pattern, out, re.MULTILINE)
        return float(found.group(1) if found else default)

    # answers differ in length (the floats differ), which ab counts as "Length" failures
    errors = sum(field(rf"{what}: (\d+)") for what in ("Connect", "Receive", "Exceptions")) \
        + field(r"^Non-2xx responses:\s+(\d+)")
    cores = {"clients": (after.ru_utime + after.ru_stime - children.ru_utime
                         - children.ru_stime) / wall}
    if served:
        cores |= {k: (v - before[k]) / wall for k, v in served.cpu().items()}
        served.settle()
    return {"requests": int(field(r"^Complete requests:\s+(\d+)")), "errors": int(errors),
            "throughput": field(r"^Requests per second:\s+([\d.]+)"),
            "p50_ms": field(r"^\s+50%\s+(\d+)"), "p99_ms": field(r"^\s+99%\s+(\d+)"),
            "cores": {k: round(v, 2) for k, v in cores.items()}}


def in_process(service: Service, images: list[bytes], batch: int, seconds: float) -> dict:
    latencies = []
    me = psutil.Process()
    cpu_before = _cpu([me])
    start = time.perf_counter()
    deadline = start + seconds
    i = 0
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        requests = [{"body": images[(i + j) % len(images)]} for j in range(batch)]
        answers = service.run([service.parse(r) for r in requests])
        assert all("embeddings" in a for a in answers)
        latencies += [time.perf_counter() - t] * batch
        i += batch
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    return {"requests": len(latencies), "errors": 0,
            "throughput": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "cores": {"in_process": round((_cpu([me]) - cpu_before) / wall, 2)}}


def summarize(concurrency: int, rounds: list[dict]) -> dict:
    """Median and range over the rounds of one concurrency."""
    def spread(values: list[float]) -> dict:
        return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                "max": round(max(values), 3)}
    served = [r["torchserve"] for r in rounds]
    direct = [r["in_process"] for r in rounds]
    cores = {k: round(statistics.median(s["cores"][k] for s in served), 2)
             for k in served[0]["cores"]}
    return {"concurrency": concurrency, "rounds": len(rounds),
            "torchserve": spread([s["throughput"] for s in served]),
            "in_process": spread([d["throughput"] for d in direct]),
            "overhead": spread([1 - s["throughput"] / d["throughput"]
                                for s, d in zip(served, direct)]),
            "p99_ms": spread([s["p99_ms"] for s in served]),
            "errors": sum(s["errors"] for s in served), "served_cores": cores,
            "in_process_cores": round(statistics.median(d["cores"]["in_process"]
                                                        for d in direct), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0, help="per point and round")
    parser.add_argument("--workers", type=int, default=None,
                        help="TorchServe workers [default: the platform's, worker_plan()]")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="largest dynamic batch [default: the platform's]")
    parser.add_argument("--max-batch-delay-ms", type=int, default=20)
    parser.add_argument("--handler-threads", type=int, default=None,
                        help="torch threads of each TorchServe worker [default: the cores "
                        "divided among the workers, as the handler sets them]")
    parser.add_argument("--netty-threads", type=int, default=None,
                        help="TorchServe frontend threads [default: TorchServe's]")
    parser.add_argument("--json", action="store_true", help="print the run's JSON record")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="print the tables of recorded runs (docs/performance/serving/) "
                        "and run nothing")
    args = parser.parse_args()
    if args.report:
        print("\n\n".join(markdown(json.loads(p.read_text())) for p in args.report))
        return
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)  # the in-process ceiling uses the whole machine
    plan = worker_plan(args.workers, args.handler_threads, args.batch_size, cores)
    root = Path(tempfile.mkdtemp(prefix="mec-bench-serving-"))
    _, store = build(root)
    images = pngs(64)
    export = root / "export"
    with zipfile.ZipFile(store / "bench.mar") as z:
        z.extractall(export)
    service = Service(export, "embed")
    extra = {"number_of_netty_threads": str(args.netty_threads),
             "netty_client_threads": str(args.netty_threads)} if args.netty_threads else {}
    ts = LocalTorchServe(root / "ts", store, *unused_ports(3), extra=extra,
                         env={"MEC_TORCH_THREADS": str(plan.threads)})
    ts.start()
    results: dict[int, list[dict]] = {c: [] for c in args.concurrency}
    try:
        ts.management().register("bench.mar", workers=plan.workers, batch_size=plan.batch_size,
                                 max_batch_delay_ms=args.max_batch_delay_ms)
        served = Served(ts)
        key = ts.keys().inference
        image = root / "image.png"
        image.write_bytes(images[0])
        for c in args.concurrency:  # warm-up, alike on both sides
            in_process(service, images, min(c, IN_PROCESS_BATCH), 2)
            clients(ts.inference_url, key, image, c, 2)
        for r in range(args.rounds):
            for c in args.concurrency:
                sides = [("in_process", lambda c=c: in_process(
                              service, images, min(c, IN_PROCESS_BATCH), args.seconds)),
                         ("torchserve", lambda c=c: clients(
                              ts.inference_url, key, image, c, args.seconds, served))]
                results[c].append({name: run() for name, run in
                                   (sides if r % 2 == 0 else sides[::-1])})
    finally:
        ts.stop()
    rows = [summarize(c, results[c]) for c in args.concurrency]
    setup = {"in_process_threads": cores, "worker_threads": plan.threads,
             "workers": plan.workers, "batch_size": plan.batch_size,
             "max_batch_delay_ms": args.max_batch_delay_ms,
             "netty_threads": args.netty_threads or "default", "cores": cores,
             "rounds": args.rounds, "seconds": args.seconds}
    if args.json:
        print(json.dumps({"setup": setup, "rows": rows}))
        return
    print(markdown({"setup": setup, "rows": rows}))


def markdown(record: dict) -> str:
    """The docs' table of one run's JSON record (what --json prints)."""
    lines = [f"<!-- {record['setup']} -->",
             "| clients | TorchServe img/s, median [range] | in-process img/s | overhead, median "
             "[range] | TorchServe p99 ms | errors | cores: frontend / worker / clients |",
             "|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        s, d, o, c = r["torchserve"], r["in_process"], r["overhead"], r["served_cores"]
        lines.append(
            f"| {r['concurrency']} | {s['median']:.1f} [{s['min']:.1f}–{s['max']:.1f}] | "
            f"{d['median']:.1f} [{d['min']:.1f}–{d['max']:.1f}] | {100 * o['median']:.1f} % "
            f"[{100 * o['min']:.1f}–{100 * o['max']:.1f}] | {r['p99_ms']['median']:.0f} | "
            f"{r['errors']} | {c['frontend']} / {c['worker']} / {c['clients']} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
