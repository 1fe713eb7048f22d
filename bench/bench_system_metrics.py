"""Cost of the trainer's system figures (mec_core.system), as a share of training time.

    python bench/bench_system_metrics.py [--backbone convnet] [--batch-size 256]
        [--steps 100] [--log-every 10] [--every-s 1.0] [--device auto] [--precision auto]

One run on the synthetic set: every reading of the figures (at a metrics flush, once
`--every-s` seconds have passed since the last; 0: at every flush) is timed inside the
run, and set against the run's own steps (the trainer's clock, past its warm-up). Prints
the figures read, the mean reading, the mean step and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from mec_core import system
from mec_core.config import TrainConfig
from mec_core.system import SystemStats
from mec_core.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="convnet")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--every-s", type=float, default=system.EVERY_S)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    spent: list[float] = []
    names: set[str] = set()
    read = SystemStats.read

    def timed(self):
        start = time.perf_counter()
        values = read(self)
        spent.append(time.perf_counter() - start)
        names.update(values)
        return values
    SystemStats.read = timed
    system.EVERY_S = args.every_s
    config = TrainConfig(dataset="synthetic", backbone=args.backbone,
                         batch_size=args.batch_size, epochs=1000, max_steps=args.steps,
                         log_every=args.log_every, monitor_every=0, checkpoint_every=10**6,
                         device=args.device, precision=args.precision)
    with tempfile.TemporaryDirectory() as out:
        result = train(config, out)
    step_s = config.batch_size / result.images_per_sec
    ratio = sum(spent) / (step_s * result.steps)
    print(json.dumps({"backbone": args.backbone, "batch_size": args.batch_size,
                      "steps": result.steps, "log_every": args.log_every,
                      "every_s": args.every_s,
                      "figures": sorted(names), "readings": len(spent),
                      "reading_ms_median": round(1e3 * statistics.median(spent), 4),
                      "reading_ms_mean": round(1e3 * statistics.mean(spent), 4),
                      "step_ms": round(1e3 * step_s, 3),
                      "share_of_training_percent": round(100 * ratio, 4)}))


if __name__ == "__main__":
    main()
