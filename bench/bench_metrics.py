"""Cost of logging every metric of every step to the database, per training step.

    MEC_DATABASE_URL=... python bench/bench_metrics.py [--steps 100000] [--log-every 10]

Writes `steps` steps of the trainer's 7 metrics through the worker's DatabaseCallbacks,
in flushes of `log-every` steps (the trainer's batching), and prints the time per step.
Compare it with the step time of a real run (e.g. 130 ms for the CPU demo convnet).
"""

from __future__ import annotations

import argparse
import time

from mec_core.train import StepMetrics
from mec_platform.db import session_scope
from mec_platform.migrate import upgrade
from mec_platform.settings import get_settings
from mec_platform.tables import Job
from worker.callbacks import DatabaseCallbacks

NAMES = ("loss", "coding_length", "spectral_norm", "lr", "lambda_inv", "teacher_momentum",
         "images_per_sec")


def measure(steps: int, log_every: int) -> float:
    """Seconds per training step spent writing metrics and progress."""
    with session_scope() as s:
        job = Job(kind="pretrain", project="bench", name="bench-metrics", queue="gpu", config={},
                  status="running", lease_owner="bench")
        s.add(job)
        s.flush()
        job_id = job.id
    callbacks = DatabaseCallbacks(job_id, "bench", poll_seconds=1.0)
    callbacks.on_start(0, steps, 1000)
    start = time.perf_counter()
    for first in range(1, steps + 1, log_every):
        records = [StepMetrics(s, s // 1000, {n: 0.001 * s for n in NAMES})
                   for s in range(first, min(first + log_every, steps + 1))]
        callbacks.on_metrics(records)
        callbacks.should_stop(records[-1].step)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--log-every", type=int, default=10)
    args = parser.parse_args()
    upgrade(get_settings().database_url)
    per_step = measure(args.steps, args.log_every)
    backend = get_settings().database_url.split(":")[0]
    print(f"{backend}: {args.steps} steps x {len(NAMES)} metrics, flush every "
          f"{args.log_every} steps: {1e3 * per_step:.3f} ms per step")


if __name__ == "__main__":
    main()
