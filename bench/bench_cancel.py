"""How long a cancel takes to stop a run whose steps are slow: ResNet-18 at 224 px, batch
32, fp32, on this machine's CPU. Each repeat trains in a thread, waits for a step to end,
asks to stop a fraction of a step later (0.2, 0.5, 0.8) through the trainer's callbacks
(as the worker's database callbacks do when a job is cancelled), and times until
`train()` returns; once stopping only at a step's end (`should_stop`, as before the
interrupt existed), once also interrupting the step (`interrupt_requested`), side by side.
Times are also given in steps (stop seconds / that run's step seconds), which a loaded
machine changes less.

    python bench/bench_cancel.py [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time

from mec_core.config import TrainConfig
from mec_core.train import Callbacks, StepMetrics, train

SLOW = {"dataset": "synthetic", "backbone": "resnet18", "image_size": 224, "batch_size": 32,
        "train_limit": 512, "max_steps": 40, "monitor_every": 0, "log_every": 1,
        "checkpoint_every": 1000, "precision": "fp32", "device": "cpu"}


class Cancel(Callbacks):
    """Stops once `asked` is set (`interrupt`: inside a step too); records when each step
    ended."""

    def __init__(self, interrupt: bool) -> None:
        self.asked = threading.Event()
        self.interrupt = interrupt
        self.steps: list[float] = []

    def on_metrics(self, records: list[StepMetrics]) -> None:
        self.steps.extend(time.perf_counter() for _ in records)

    def should_stop(self, step: int) -> bool:
        return self.asked.is_set()

    def interrupt_requested(self) -> bool:
        return self.interrupt and self.asked.is_set()


def once(fraction: float, interrupt: bool) -> dict:
    callbacks = Cancel(interrupt)
    with tempfile.TemporaryDirectory() as out:
        done: dict = {}
        runner = threading.Thread(target=lambda: done.update(
            result=train(TrainConfig(**SLOW), out, callbacks, resume=False)))
        runner.start()
        while len(callbacks.steps) < 3:  # the first steps are slower (allocation)
            time.sleep(0.05)
        step = callbacks.steps[2] - callbacks.steps[1]
        time.sleep(fraction * step)
        asked = time.perf_counter()
        callbacks.asked.set()
        runner.join()
        stop = time.perf_counter() - asked
        return {"interrupt": interrupt, "fraction": fraction, "step_seconds": round(step, 2),
                "stop_seconds": round(stop, 2), "stop_steps": round(stop / step, 3),
                "steps_done": done["result"].steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = [once(f, interrupt) for f in (0.2, 0.5, 0.8)[:args.repeats]
            for interrupt in (False, True)]
    record = {"config": SLOW, "cpu": platform.processor() or platform.machine(), "runs": runs}
    for interrupt in (False, True):
        mine = [r for r in runs if r["interrupt"] == interrupt]
        record["interrupt" if interrupt else "step_end"] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("step_seconds", "stop_seconds", "stop_steps")}
    if args.json:
        print(json.dumps(record))
        return
    for r in runs:
        print(f"{'interrupt' if r['interrupt'] else 'step end '}: asked {r['fraction']:.1f} "
              f"step in, stopped after {r['stop_seconds']} s = {r['stop_steps']} step "
              f"(a step: {r['step_seconds']} s)")
    for name in ("step_end", "interrupt"):
        m = record[name]
        print(f"median {name}: {m['stop_seconds']} s to stop = {m['stop_steps']} step "
              f"({m['step_seconds']} s per step)")


if __name__ == "__main__":
    main()
