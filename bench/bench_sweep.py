"""A sweep of the small-image recipe on Fashion-MNIST, run through the platform: ε² × base
learning rate, one epoch per trial, scored by the online kNN top-1 (a held-out part of the
training set), with successive halving on.

    python bench/bench_sweep.py [--epochs 1] [--json]
    python bench/bench_sweep.py --report docs/science/sweeps/2026-12-01-fmnist.json

A whole platform (`mec up`'s stack: API, one worker, SQLite) in a temporary directory; the
sweep is one POST /v1/jobs, and this script only waits for it and reads its result.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import records

from api.client import Client
from mec_platform.stack import Ports, Stack

SPACE = {"eps_sq": {"choice": [8, 16, 64]}, "base_lr": {"choice": [0.5, 1.0]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--train-limit", type=int, default=None)
    records.add_options(parser)
    args = parser.parse_args()
    if records.reported(args, markdown):
        return
    base = {"dataset": "fashion-mnist", "backbone": "convnet", "epochs": args.epochs,
            "batch_size": 256, "monitor_every": 40}
    if args.train_limit:
        base["train_limit"] = args.train_limit
    root = Path(tempfile.mkdtemp(prefix="mec-bench-sweep-"))
    stack = Stack(root, Ports.any_free())
    try:
        stack.up()
        client = Client(stack.api_url, stack.create_key("bench"))
        started = time.perf_counter()
        sweep = client.submit({"kind": "sweep", "name": "fmnist eps_sq x base_lr", "config": {
            "base": base, "space": SPACE, "algorithm": "grid",
            "objective": {"metric": "knn_top1", "mode": "max"}, "max_parallel": 1}})
        sweep = client.wait(sweep.id, poll=5)
        minutes = (time.perf_counter() - started) / 60
        trials = {t.id: t for t in client.jobs(parent_id=sweep.id, limit=100).data}
    finally:
        stack.down()
    rows = [row | {"minutes": _minutes(trials[row["job_id"]])} for row in sweep.result["trials"]]
    record = {"base": base, "space": SPACE, "status": sweep.status, "minutes": round(minutes, 1),
              "trials": rows, "best": sweep.result["best"]}
    records.emit(args, record, markdown)


def _minutes(job) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return round((job.finished_at - job.started_at).total_seconds() / 60, 2)


def markdown(record: dict) -> str:
    """The table of one run's JSON record (what --json prints)."""
    lines = [f"Fashion-MNIST, convnet, {record['base']['epochs']:g} epoch(s) per trial, grid "
             f"over {', '.join(record['space'])}; {record['minutes']} min in all; "
             f"sweep {record['status']}", "",
             "| trial | ε² | base lr | status | online kNN top-1 | minutes | why it stopped |",
             "|---|---|---|---|---|---|---|"]
    for t in record["trials"]:
        value = "" if t["value"] is None else f"{t['value']:.2f} %"  # logged in percent
        lines.append(f"| {t['number']} | {t['params']['eps_sq']} | {t['params']['base_lr']} | "
                     f"{t['status']} | {value} | {t['minutes'] or ''} | "
                     f"{t.get('reason', '')} |")
    best = record["best"]
    lines.append(f"\nBest: trial {best['number']} ({best['params']}), online kNN top-1 "
                 f"{best['value']:.2f} %")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
