"""Embedding endpoint under concurrent clients: TorchServe against the same model called
in-process, interleaved in rounds, with median and spread, and where the CPU went.

    python bench/bench_serving.py [--concurrency 1 8 32] [--rounds 5] [--seconds 6]
        [--workers N] [--batch-size N] [--max-batch-delay-ms 2]
        [--handler-threads N] [--netty-threads N] [--answer float32|json] [--json]
        [--warmup 60] [--jvm-options=OPTIONS] [--serve-env NAME=VALUE] [--image-size 32]
    python bench/bench_serving.py --soak 12 --concurrency 8 --seconds 15   # JIT warm-up
    python bench/bench_serving.py --profile 8 [--concurrency 32]   # where the time goes

The model is resnet18 with the small-image stem on 32 px RGB images (as `mec train
--dataset cifar10`), packaged by `serving.package` and served by a real TorchServe with
token authorization. The clients are ApacheBench's (`ab`, Debian: apache2-utils), each
sending one PNG per request (raw body) on a keep-alive connection, back to back, and
asking for the vector as raw float32 (`Accept: application/octet-stream`; `--answer json`
for the JSON answer).
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

--profile SECONDS measures instead where each side's time goes, per concurrency: py-spy
samples the Python stacks of the in-process loop and of each TorchServe worker (phases
below; "idle" is a worker waiting for its next batch), and TorchServe's own counters
(its metrics API, in Prometheus mode for this run) give each request's time in the queue
and end to end. py-spy reads other processes' memory: it needs root or CAP_SYS_PTRACE.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import psutil
import records
import torch
from PIL import Image

from mec_core import checkpoint
from mec_core.config import TrainConfig
from mec_core.data import synthetic
from mec_core.train import train
from serving.client import FLOAT32, MAX_BATCH_DELAY_MS
from serving.package import package
from serving.service import Service
from serving.torchserve import LocalTorchServe, frontend_jvm_options, unused_ports, worker_plan

IN_PROCESS_BATCH = 8
ANSWERS = {"float32": FLOAT32, "json": "application/json"}
SAMPLE_HZ = 100
PHASES = (  # a sampled stack's phase: the first whose frame it holds
    ("forward", "Embedder.embed"),
    ("decode PNG", "serving/images.py"),
    ("answer as lists", "Service._answer"),
    ("encode answer", "Service.encode"),
    ("encode JSON", "json/"),
    ("read batch", "retrieve_msg"),
    ("log metrics", "logging/"),
)
OTHER = "other"  # the worker's loop, socket writes, TorchServe's bookkeeping
IDLE = "idle"
COUNTERS = ("ts_inference_requests_total", "ts_queue_latency_microseconds",
            "ts_inference_latency_microseconds")


def pngs(n: int, size: int = 32) -> list[bytes]:
    out = []
    for image in synthetic("test", n=n, size=size).images:
        buf = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def build(root: Path, size: int = 32) -> tuple[Path, Path]:
    """A resnet18 checkpoint (one step on synthetic `size` px images) and its .mar files.
    Global pooling (512-d embeddings), as in the recorded runs of docs/performance.md."""
    config = TrainConfig(dataset="synthetic", image_size=size, backbone="resnet18", batch_size=16,
                         max_steps=1, epochs=1, train_limit=64, proj_dim=256, log_every=1,
                         feature_grid=1)
    train(config, root / "run")
    ckpt = checkpoint.latest(root / "run" / "checkpoints")
    package(ckpt, root / "store", "bench", reference_limit=256)
    return ckpt, root / "store"


def unpacked(store: Path, root: Path) -> Path:
    """The embedding archive unzipped under `root`, as TorchServe unpacks it for its
    workers."""
    with zipfile.ZipFile(store / "bench.mar") as z:
        z.extractall(root / "export")
    return root / "export"


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
        self.frontend, self.workers = ts.processes()

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
            served: Served | None = None, path: str = "predictions/bench",
            accept: str = "application/json") -> dict:
    """ApacheBench: `concurrency` keep-alive clients posting `image` for `seconds` and
    asking for answers of type `accept`; with `served`, also the cores each side used
    meanwhile (and it waits for the workers to be idle again before returning)."""
    before = served.cpu() if served else {}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "percentiles.csv"  # to the µs: its summary rounds to whole ms
        out = subprocess.run(
            ["ab", "-k", "-q", "-s", "60", "-t", str(seconds), "-n", "10000000", "-c",
             str(concurrency), "-e", str(csv), "-p", str(image), "-T", "image/png", "-H",
             f"Authorization: Bearer {key}", "-H", f"Accept: {accept}", f"{url}/{path}"],
            capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - started
        ms = dict(line.split(",") for line in csv.read_text().splitlines()[1:])
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
            "p50_ms": round(float(ms["50"]), 1), "p99_ms": round(float(ms["99"]), 1),
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


class Sampler:
    """py-spy sampling the Python stacks of some processes for `seconds`."""

    def __init__(self, pids: list[int], seconds: float, folder: Path) -> None:
        spy = Path(sys.executable).with_name("py-spy")
        self.seconds, self.files = seconds, [folder / f"{pid}.txt" for pid in pids]
        self.spies = [subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--duration", str(round(seconds)),
             "--rate", str(SAMPLE_HZ), "--format", "raw", "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for pid, out in zip(pids, self.files)]

    def shares(self) -> dict[str, float]:
        """Each phase's share of the sampled processes' time; IDLE where no stack was
        active (py-spy leaves out threads that wait in a system call)."""
        counts = dict.fromkeys([name for name, _ in PHASES] + [OTHER, IDLE], 0)
        for spy, out in zip(self.spies, self.files):
            _, err = spy.communicate()
            if spy.returncode != 0:
                raise RuntimeError(f"py-spy failed (it needs root or CAP_SYS_PTRACE): {err}")
            for line in out.read_text().splitlines():
                stack, n = line.rsplit(" ", 1)
                name = next((name for name, frame in PHASES if frame in stack), OTHER)
                counts[name] += int(n)
        total = len(self.files) * round(self.seconds) * SAMPLE_HZ
        counts[IDLE] = max(0, total - sum(counts.values()))
        return {k: round(v / max(total, sum(counts.values())), 3) for k, v in counts.items()}


def counters(url: str) -> dict[str, float]:
    """TorchServe's request counters from its metrics API (Prometheus text)."""
    found = dict.fromkeys(COUNTERS, 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name = line.split("{", 1)[0]
        if name in found:
            found[name] += float(line.rsplit(" ", 1)[1])
    return found


def profile(concurrency: int, seconds: float, service: Service, images: list[bytes],
            ts: LocalTorchServe, served: Served, key: str, image: Path, folder: Path,
            accept: str) -> dict:
    """Where each side's time goes at one concurrency (see --profile)."""
    sampler = Sampler([os.getpid()], seconds, folder)
    direct = in_process(service, images, min(concurrency, IN_PROCESS_BATCH), seconds)
    direct["phases"] = sampler.shares()
    before = counters(ts.metrics_url)
    sampler = Sampler([p.pid for p in served.workers], seconds, folder)
    remote = clients(ts.inference_url, key, image, concurrency, seconds, served,
                     accept=accept)
    remote["phases"] = sampler.shares()
    after = counters(ts.metrics_url)
    requests = max(1.0, after[COUNTERS[0]] - before[COUNTERS[0]])
    remote["queue_ms"] = round((after[COUNTERS[1]] - before[COUNTERS[1]]) / requests / 1e3, 1)
    remote["latency_ms"] = round((after[COUNTERS[2]] - before[COUNTERS[2]]) / requests / 1e3, 1)
    return {"concurrency": concurrency, "in_process": direct, "torchserve": remote}


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
            "p50_ms": {"torchserve": spread([s["p50_ms"] for s in served]),
                       "in_process": spread([d["p50_ms"] for d in direct])},
            "errors": sum(s["errors"] for s in served), "served_cores": cores,
            "in_process_cores": round(statistics.median(d["cores"]["in_process"]
                                                        for d in direct), 2)}


def env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0, help="per point and round")
    parser.add_argument("--workers", type=int, default=None,
                        help="TorchServe workers [default: the platform's, worker_plan()]")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="largest dynamic batch [default: the platform's]")
    parser.add_argument("--max-batch-delay-ms", type=int, default=MAX_BATCH_DELAY_MS)
    parser.add_argument("--batches", choices=("adaptive", "fixed"), default="adaptive",
                        help="adaptive: a batch waits the delay only while another worker "
                        "computes (our plugin, the platform's); fixed: TorchServe's own, "
                        "every batch waits it")
    parser.add_argument("--handler-threads", type=int, default=None,
                        help="torch threads of each TorchServe worker [default: the cores "
                        "divided among the workers, as the handler sets them]")
    parser.add_argument("--netty-threads", type=int, default=None,
                        help="TorchServe frontend threads [default: TorchServe's]")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="seconds TorchServe serves the most clients before the rounds, "
                        "so that its Java frontend is compiled (about 45 s on 2 cores)")
    parser.add_argument("--soak", type=int, metavar="WINDOWS",
                        help="instead of the rounds and the warm-up: serve the most clients "
                        "for WINDOWS windows of --seconds from TorchServe's start, and print "
                        "each window's img/s and cores (the frontend's JIT warm-up)")
    parser.add_argument("--jvm-options", default=None,
                        help="options of TorchServe's Java frontend instead of the "
                        "platform's (frontend_jvm_options()); --jvm-options= for the JVM's "
                        "defaults")
    parser.add_argument("--image-size", type=int, default=32,
                        help="pixels a side of the model's images; smaller ones make the "
                        "model faster, and TorchServe's fixed costs weigh as on a faster CPU")
    parser.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                        type=env_pair,
                        help="an environment variable of TorchServe and its workers only "
                        "(the in-process side keeps the bench's), e.g. OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--answer", choices=ANSWERS, default="float32",
                        help="what the clients ask for with Accept [default: float32, the "
                        "vectors' raw bytes]")
    parser.add_argument("--profile", type=float, metavar="SECONDS",
                        help="instead of the rounds: where each side's time goes, sampled "
                        "for SECONDS per side and concurrency")
    records.add_options(parser)
    args = parser.parse_args()
    if records.reported(args, markdown):
        return
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)  # the in-process ceiling uses the whole machine
    plan = worker_plan(args.workers, args.handler_threads, args.batch_size, cores)
    root = Path(tempfile.mkdtemp(prefix="mec-bench-serving-"))
    _, store = build(root, args.image_size)
    images = pngs(64, args.image_size)
    service = Service(unpacked(store, root), "embed")
    extra = {"number_of_netty_threads": str(args.netty_threads),
             "netty_client_threads": str(args.netty_threads)} if args.netty_threads else {}
    serve_env = dict(args.serve_env)
    jvm = frontend_jvm_options() if args.jvm_options is None else args.jvm_options.split()
    if args.profile:
        extra["metrics_mode"] = "prometheus"  # TorchServe's request counters
    ts = LocalTorchServe(root / "ts", store, *unused_ports(3), extra=extra, jvm_options=jvm,
                         env={"MEC_TORCH_THREADS": str(plan.threads)} | serve_env)
    ts.start()
    results: dict[int, list[dict]] = {c: [] for c in args.concurrency}
    profiles = []
    try:
        ts.client().register("bench.mar", workers=plan.workers, batch_size=plan.batch_size,
                             max_batch_delay_ms=args.max_batch_delay_ms,
                             adaptive=args.batches == "adaptive")
        served = Served(ts)
        key = ts.keys().inference
        image = root / "image.png"
        image.write_bytes(images[0])
        accept = ANSWERS[args.answer]
        for w in range(args.soak or 0):
            window = clients(ts.inference_url, key, image, max(args.concurrency),
                             args.seconds, served, accept=accept)
            print(f"window {w}: {window['throughput']} img/s, cores {window['cores']}",
                  flush=True)
        if args.soak:
            return
        for c in args.concurrency:  # warm-up, alike on both sides
            in_process(service, images, min(c, IN_PROCESS_BATCH), 2)
            clients(ts.inference_url, key, image, c, 2, accept=accept)
        # the frontend's JIT compiler takes 0.1 of a core for its first ~45 s under load
        # (15 s windows at 8 clients: 0.19, 0.14, 0.11, then 0.06-0.07 for good): without
        # this, the rounds measure a TorchServe that has just started, not one serving
        clients(ts.inference_url, key, image, max(args.concurrency), args.warmup,
                accept=accept)
        for c in args.concurrency if args.profile else []:
            profiles.append(profile(c, args.profile, service, images, ts, served, key, image,
                                    root, accept))
        for r in range(0 if args.profile else args.rounds):
            for c in args.concurrency:
                sides = [("in_process", lambda c=c: in_process(
                              service, images, min(c, IN_PROCESS_BATCH), args.seconds)),
                         ("torchserve", lambda c=c: clients(
                              ts.inference_url, key, image, c, args.seconds, served,
                              accept=accept))]
                results[c].append({name: run() for name, run in
                                   (sides if r % 2 == 0 else sides[::-1])})
    finally:
        ts.stop()
    setup = {"host": records.host(), "in_process_threads": cores,
             "worker_threads": plan.threads,
             "workers": plan.workers, "batch_size": plan.batch_size,
             "max_batch_delay_ms": args.max_batch_delay_ms, "batches": args.batches,
             "netty_threads": args.netty_threads or "default", "cores": cores,
             "jvm_options": " ".join(jvm), "serve_env": serve_env,
             "worker_spincount": ts.env["GOMP_SPINCOUNT"], "image_size": args.image_size,
             "rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup,
             "precision": "float32",  # what the handler and the in-process side compute in
             "answer": args.answer}
    record = {"setup": setup | {"profile_seconds": args.profile}, "profile": profiles} \
        if args.profile else {"setup": setup,
                              "rows": [summarize(c, results[c]) for c in args.concurrency]}
    records.emit(args, record, markdown)


def _p50(row: dict) -> str:
    """Median p50 latencies (records from before they were kept: –)."""
    if "p50_ms" not in row:
        return "–"
    return (f"{row['p50_ms']['torchserve']['median']:.1f} / "
            f"{row['p50_ms']['in_process']['median']:.1f}")


def markdown(record: dict) -> str:
    """The docs' table of one run's JSON record (what --json prints)."""
    if "profile" in record:
        return profile_markdown(record)
    lines = [f"<!-- {record['setup']} -->",
             "| clients | TorchServe img/s, median [range] | in-process img/s | overhead, median "
             "[range] | p50 ms: TorchServe / in-process | TorchServe p99 ms | errors | "
             "cores: frontend / worker / clients |",
             "|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        s, d, o, c = r["torchserve"], r["in_process"], r["overhead"], r["served_cores"]
        lines.append(
            f"| {r['concurrency']} | {s['median']:.1f} [{s['min']:.1f}–{s['max']:.1f}] | "
            f"{d['median']:.1f} [{d['min']:.1f}–{d['max']:.1f}] | {100 * o['median']:.1f} % "
            f"[{100 * o['min']:.1f}–{100 * o['max']:.1f}] | {_p50(r)} | "
            f"{r['p99_ms']['median']:.0f} | "
            f"{r['errors']} | {c['frontend']} / {c['worker']} / {c['clients']} |")
    return "\n".join(lines)


def profile_markdown(record: dict) -> str:
    """Each side's share of time by phase, and TorchServe's per-request queue and latency."""
    phases = list(record["profile"][0]["in_process"]["phases"])
    lines = [f"<!-- {record['setup']} -->",
             "| clients | side | img/s | " + " | ".join(phases) + " | queue ms | latency ms |",
             "|---|---|---|" + "---|" * len(phases) + "---|---|"]
    for point in record["profile"]:
        for side in ("in_process", "torchserve"):
            r = point[side]
            shares = " | ".join(f"{100 * r['phases'][k]:.1f} %" for k in phases)
            lines.append(f"| {point['concurrency']} | {side.replace('_', '-')} | "
                         f"{r['throughput']:.1f} | {shares} | {r.get('queue_ms', '–')} | "
                         f"{r.get('latency_ms', '–')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
