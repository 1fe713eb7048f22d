"""A job's step time with its checkpoints going to an S3 store (SeaweedFS on this machine)
against a file:// store, side by side: the same run, alternately on each store,
`--repeats` times; the medians of the mean step time, and of each pair's ratio (S3 run /
the file:// run just before it: the load of a shared machine drifts slowly). A step's time
is the run's wall time from its first step to the last checkpoint stored (what the worker
waits for before the job ends: uploads included), divided by its steps; its CPU time, the
same for the process's CPU time (the upload thread's included). Checkpoints are stored as a worker
stores them (worker.job_store.CheckpointUploads: on file:// written in place, on S3
uploaded in a thread of their own while the next steps run).

    nice python bench/bench_checkpoints.py --repeats 5 --json \\
        > docs/performance/checkpoints/2026-12-04-epyc-2core.json
    python bench/bench_checkpoints.py --report docs/performance/checkpoints/*.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from records import add_options, emit, host, reported
from s3_server import S3Server


def one_run(job_id: int, config, storage_url: str) -> tuple[float, float, int, int]:
    """(mean wall and CPU seconds per step, steps, bytes of the last checkpoint) of one run
    on the store of `storage_url`."""
    from mec_core.train import Callbacks, train
    from mec_platform import settings, storage
    from worker import job_store

    os.environ["MEC_STORAGE_URL"] = storage_url
    settings.get_settings.cache_clear()
    storage.get_store.cache_clear()

    class Storing(Callbacks):
        def __init__(self) -> None:
            self.uploads = job_store.CheckpointUploads(job_id, lambda ref: None)
            self.started = self.cpu = 0.0

        def on_start(self, start_step: int, total_steps: int, steps_per_epoch: int) -> None:
            self.started, self.cpu = time.perf_counter(), time.process_time()

        def on_checkpoint(self, path: Path, step: int) -> None:
            self.uploads.add(path)

    callbacks = Storing()
    result = train(config, job_store.folder(job_id), callbacks, resume=False)
    callbacks.uploads.close()
    seconds = time.perf_counter() - callbacks.started
    cpu = time.process_time() - callbacks.cpu
    return seconds / result.steps, cpu / result.steps, result.steps, \
        result.checkpoint.stat().st_size


def run(args: argparse.Namespace) -> dict:
    import torch

    from mec_core.config import TrainConfig

    load_before = round(os.getloadavg()[0], 2)  # the machine's load (1 min) before the run
    root = Path(tempfile.mkdtemp(prefix="mec-bench-checkpoints-"))
    server = S3Server(root / "seaweedfs")
    try:
        os.environ.update(server.env | {"MEC_DATA_DIR": str(root / "worker")})
        stores = {"file": f"file://{root / 'store'}",
                  "s3": f"s3://{server.bucket('bench')}/platform"}
        config = TrainConfig(dataset="synthetic", backbone=args.backbone, image_size=32,
                             batch_size=args.batch_size, train_limit=1024, epochs=100,
                             max_steps=args.steps, checkpoint_every=args.checkpoint_every,
                             log_every=10, warmup_epochs=0.1, lambda_warmup_epochs=0.1)
        one_run(0, config.model_copy(update={"max_steps": 4}), stores["file"])  # warm-up
        step = {name: [] for name in stores}
        cpu = {name: [] for name in stores}
        for repeat in range(args.repeats):
            for name, url in stores.items():  # side by side: the same load on both
                seconds, cpu_seconds, steps, size = one_run(2 * repeat + (name == "s3") + 1,
                                                            config, url)
                step[name].append(round(seconds, 4))
                cpu[name].append(round(cpu_seconds, 4))
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in step.items()}
    pairs = [s3 / file for file, s3 in zip(step["file"], step["s3"])]
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    return {"bench": "checkpoints", "when": time.strftime("%Y-%m-%d %H:%M"), "host": host(),
            "command": f"python bench/bench_checkpoints.py --repeats {args.repeats} "
                       f"--steps {args.steps} --checkpoint-every {args.checkpoint_every} "
                       f"--backbone {args.backbone} --batch-size {args.batch_size}",
            "backbone": args.backbone, "batch_size": args.batch_size, "steps": steps,
            "torch_threads": torch.get_num_threads(),
            "checkpoint_every": args.checkpoint_every, "checkpoint_bytes": size,
            "step_seconds": step, "median_step_seconds": medians,
            "s3_over_file": round(medians["s3"] / medians["file"], 4),
            "median_pair_ratio": round(statistics.median(pairs), 4),
            "cpu_step_seconds": cpu, "median_cpu_step_seconds": cpu_medians,
            "cpu_s3_over_file": round(cpu_medians["s3"] / cpu_medians["file"], 4),
            "load_average": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
            "note": "the S3 server runs on the same host (its CPU counts); repeats "
                    "alternate the two stores so both see the same load"}


def markdown(r: dict) -> str:
    med, cpu = r["median_step_seconds"], r["median_cpu_step_seconds"]
    threads = f", {r['torch_threads']} torch thread(s)" if "torch_threads" in r else ""
    return (f"{r['backbone']}, batch {r['batch_size']}, {r['steps']} steps{threads}, a "
            "checkpoint of "
            f"{r['checkpoint_bytes'] / 2**20:.0f} MiB every {r['checkpoint_every']} steps, "
            f"{len(r['step_seconds']['s3'])} repeats, {r['when']} ({r['host']['cpu']}, "
            f"{r['host']['cores']} cores):\n\n"
            "| checkpoints to | median step time | median CPU time per step | runs (ms) |\n"
            "|---|---|---|---|\n"
            f"| file:// (local disk) | {med['file'] * 1000:.0f} ms | "
            f"{cpu['file'] * 1000:.0f} ms | "
            f"{', '.join(f'{s * 1000:.0f}' for s in r['step_seconds']['file'])} |\n"
            f"| s3:// (SeaweedFS) | {med['s3'] * 1000:.0f} ms | {cpu['s3'] * 1000:.0f} ms | "
            f"{', '.join(f'{s * 1000:.0f}' for s in r['step_seconds']['s3'])} |\n\n"
            f"S3 / file: {r['s3_over_file']:.3f} (medians), {r['median_pair_ratio']:.3f} "
            f"(median of the pairs' ratios), CPU time {r['cpu_s3_over_file']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--backbone", default="convnet")
    parser.add_argument("--batch-size", type=int, default=32)
    add_options(parser)
    args = parser.parse_args()
    if not reported(args, markdown):
        emit(args, run(args), markdown)


if __name__ == "__main__":
    main()
