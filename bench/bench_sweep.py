"""A sweep of the small-image recipe on Fashion-MNIST, run through the platform: ε² × base
learning rate, one epoch per trial, scored by the online kNN top-1 (a held-out part of the
training set), or with --evaluation by a kNN evaluation of each trial's model on the test
set; successive halving on the online kNN either way.

    python bench/bench_sweep.py [--epochs 1] [--evaluation knn] [--json]
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

from mec_client import Client
from mec_platform.stack import Ports, Stack

SPACE = {"eps_sq": {"choice": [8, 16, 64]}, "base_lr": {"choice": [0.5, 1.0]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--evaluation", choices=["knn", "linear"], default=None,
                        help="rank trials by this evaluation of their models (test set)")
    records.add_options(parser)
    args = parser.parse_args()
    if records.reported(args, markdown):
        return
    base = {"dataset": "fashion-mnist", "backbone": "convnet", "epochs": args.epochs,
            "batch_size": 256, "monitor_every": 40}
    if args.train_limit:
        base["train_limit"] = args.train_limit
    objective = {"metric": "knn_top1", "mode": "max"} | (
        {"evaluation": {"protocol": args.evaluation}} if args.evaluation else {})
    root = Path(tempfile.mkdtemp(prefix="mec-bench-sweep-"))
    stack = Stack(root, Ports.any_free())
    try:
        stack.up()
        client = Client(stack.api_url, stack.create_key("bench"))
        started = time.perf_counter()
        sweep = client.submit({"kind": "sweep", "name": "fmnist eps_sq x base_lr", "config": {
            "base": base, "space": SPACE, "algorithm": "grid",
            "objective": objective, "max_parallel": 1}})
        sweep = client.wait(sweep.id, poll=5)
        minutes = (time.perf_counter() - started) / 60
        trials = {t.id: t for t in client.jobs(parent_id=sweep.id, limit=100).data}
    finally:
        stack.down()
    rows = [row | {"minutes": _minutes(trials[row["job_id"]]),
                   "online": (trials[row["job_id"]].last_metrics or {}).get("knn_top1")}
            for row in sweep.result["trials"]]
    record = {"base": base, "space": SPACE, "objective": objective, "status": sweep.status,
              "minutes": round(minutes, 1), "trials": rows, "best": sweep.result["best"]}
    records.emit(args, record, markdown)


def _minutes(job) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return round((job.finished_at - job.started_at).total_seconds() / 60, 2)


def markdown(record: dict) -> str:
    """The table of one run's JSON record (what --json prints)."""
    evaluation = (record.get("objective") or {}).get("evaluation")
    scored = f"test-set {evaluation['protocol']} top-1" if evaluation else "online kNN top-1"
    extra = [f" {scored} |", "---|"] if evaluation else ["", ""]
    lines = [f"Fashion-MNIST, convnet, {record['base']['epochs']:g} epoch(s) per trial, grid "
             f"over {', '.join(record['space'])}, ranked by the {scored}; "
             f"{record['minutes']} min in all; sweep {record['status']}", "",
             f"| trial | ε² | base lr | status | online kNN top-1 |{extra[0]} minutes | "
             "why it stopped |", f"|---|---|---|---|---|{extra[1]}---|---|"]
    for t in record["trials"]:
        online = t.get("online", None if evaluation else t["value"])
        cells = [_pct(online) if t["status"] == "succeeded" else ""] + \
            ([_pct(t["value"])] if evaluation else [])
        lines.append(f"| {t['number']} | {t['params']['eps_sq']} | {t['params']['base_lr']} | "
                     f"{t['status']} | {' | '.join(cells)} | {t['minutes'] or ''} | "
                     f"{t.get('reason', '')} |")
    best = record["best"]
    lines.append(f"\nBest: trial {best['number']} ({best['params']}), {scored} "
                 f"{best['value']:.2f} %")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} %"  # both are in percent


if __name__ == "__main__":
    main()
