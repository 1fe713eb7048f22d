"""Batch-1 forwards of the served model in two processes taking turns, as TorchServe's two
workers do for a lone client, against one process alone; with the weights shared (the
pages of the export's file, as serving.embedder loads them) or copied into each process;
with --idle-ms, also one process idle that long before each forward, as a lone client's
worker is between its requests (the batch delay, the hops, the other worker's turn);
with --wait spin, the idle process polls for its next forward instead of sleeping on it.

    python bench/bench_worker_turns.py [--forwards 400] [--repeats 2] [--idle-ms 0 5 20]
                                       [--wait block|spin] [--json]

The model is bench_serving's (resnet18, small stem, 32 px). Each mode runs in fresh
processes (spawned, one forward at a time, handed from one to the next over pipes), the
modes alternating within each repeat; a mode's figure is the median forward (ms) of its
processes, the first 50 forwards of each left out. Each process computes on every core,
as a worker does for a lone request; the OpenMP spin is the workers'
(serving.torchserve.WORKER_OMP_SPINCOUNT) unless GOMP_SPINCOUNT is set.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import records
from bench_serving import build, pngs, unpacked

from serving.torchserve import WORKER_OMP_SPINCOUNT

MODES = ((1, "shared"), (2, "shared"), (2, "private"), (1, "private"))
SKIP = 50


def worker(export: Path, weights: str, conn, forwards: int, spin: bool) -> None:
    import torch

    from serving.service import Service

    torch.set_num_threads(os.cpu_count() or 1)
    service = Service(export, "embed")
    if weights == "private":
        net = service.embedder.net
        for t in itertools.chain(net.parameters(), net.buffers()):
            t.data = t.data.clone()
    images = pngs(16)
    times = []
    for i in range(forwards):
        while spin and not conn.poll(0):
            pass
        conn.recv()
        start = time.perf_counter()
        service.run([service.parse({"body": images[i % len(images)]})])
        times.append(time.perf_counter() - start)
        conn.send(None)
    conn.send(statistics.median(times[SKIP:]) * 1e3)


def turns(export: Path, processes: int, weights: str, forwards: int,
          idle_ms: float = 0, spin: bool = False) -> float:
    """Each process's median forward (ms) while they take turns, each handed its next
    forward `idle_ms` after the previous one ended; their median."""
    spawn = mp.get_context("spawn")  # fresh processes, as TorchServe starts its workers
    pipes = [spawn.Pipe() for _ in range(processes)]
    procs = [spawn.Process(target=worker, args=(export, weights, theirs, forwards, spin),
                           daemon=True)  # not left waiting if one of them fails
             for _, theirs in pipes]
    for p in procs:
        p.start()
    for i in range(forwards * processes):
        ours = pipes[i % processes][0]
        time.sleep(idle_ms / 1e3)
        ours.send(None)
        ours.recv()
    medians = [ours.recv() for ours, _ in pipes]
    for p in procs:
        p.join()
    return round(statistics.median(medians), 2)


def markdown(record: dict) -> str:
    lines = [f"<!-- {record['setup']} -->",
             "| processes | weights | idle before a forward, ms | forward p50 ms, each repeat "
             "| median |", "|---|---|---|---|---|"]
    for row in record["rows"]:
        each = " / ".join(f"{v:.2f}" for v in row["p50_ms"])
        lines.append(f"| {row['processes']} | {row['weights']} | {row.get('idle_ms', 0):g} | "
                     f"{each} | "
                     f"{statistics.median(row['p50_ms']):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forwards", type=int, default=400, help="per process and mode")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--idle-ms", type=float, nargs="+", default=[],
                        help="instead of the modes: one process (shared weights) idle "
                        "this long before each forward, for each value")
    parser.add_argument("--wait", choices=("block", "spin"), default="block",
                        help="how a process waits for its next forward: blocked on its "
                        "pipe, as a worker on its socket, or polling it")
    records.add_options(parser)
    args = parser.parse_args()
    if records.reported(args, markdown):
        return
    os.environ.setdefault("GOMP_SPINCOUNT", str(WORKER_OMP_SPINCOUNT))  # the children's
    root = Path(tempfile.mkdtemp(prefix="mec-bench-turns-"))
    _, store = build(root)
    export = unpacked(store, root)
    rows = ([{"processes": 1, "weights": "shared", "idle_ms": ms, "p50_ms": []}
             for ms in args.idle_ms] if args.idle_ms else
            [{"processes": n, "weights": w, "idle_ms": 0, "p50_ms": []} for n, w in MODES])
    for _ in range(args.repeats):
        for row in rows:
            row["p50_ms"].append(turns(export, row["processes"], row["weights"],
                                       args.forwards, row["idle_ms"],
                                       args.wait == "spin"))
    record = {"setup": {"host": records.host(), "threads": os.cpu_count(),
                        "forwards": args.forwards, "repeats": args.repeats,
                        "spincount": os.environ["GOMP_SPINCOUNT"], "wait": args.wait,
                        "precision": "float32"},
              "rows": rows}
    records.emit(args, record, markdown)


if __name__ == "__main__":
    main()
