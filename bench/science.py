"""The science tables of docs/science.md: run experiments, record every run, print tables.

Every run (config, seed, wall time, kNN and linear top-1, last metrics) is appended to one
JSON-lines file, and the tables are made from that file only, so no figure is typed by hand
and a re-run skips what is already recorded:

    python bench/science.py run recipe              # one group of experiments
    python bench/science.py run methods --seeds 0 1
    python bench/science.py tables > /tmp/t.md      # every table, from docs/science/runs.jsonl
    python bench/science.py run quick --runs /tmp/q.jsonl && \\
        python bench/science.py tables --runs /tmp/q.jsonl   # seconds, on digits (a test)

Groups: see GROUPS below. A row is a label and the TrainConfig fields it sets over the
group's base; "pixels" and "random" rows are the untrained baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from mec_core.config import TrainConfig, image_size, stored_config
from mec_core.data import load_dataset
from mec_core.evaluate import features, from_checkpoint, knn, linear_probe, random_init, raw_pixels
from mec_core.train import train

RUNS = Path(__file__).resolve().parents[1] / "docs" / "science" / "runs.jsonl"
FM = {"dataset": "fashion-mnist", "backbone": "convnet", "batch_size": 256}
METHODS = ("mec", "simclr", "byol", "simsiam", "barlow_twins", "vicreg")
GRID = [(lr, 1e-5) for lr in (0.2, 0.5, 1.0)]  # the same for every method

# group -> (base config, rows); a row: (label, fields over the base)
GROUPS: dict[str, tuple[dict, list[tuple[str, dict]]]] = {
    # the paper's recipe (warm-ups capped at a tenth of the run) at d = 512, the small
    # recipe with the paper's EMA teacher, and variations of it (3 epochs)
    "recipe": ({**FM, "epochs": 3, "feature_grid": 1}, [
        ("ImageNet recipe, d 512", {"recipe": "imagenet", "proj_dim": 512}),
        ("small, EMA 0.99", {"teacher_momentum": 0.99}),
        ("small, EMA 0.99, plain views", {"teacher_momentum": 0.99,
                                          "augmentation": "small_plain"}),
        ("small, EMA 0.99, crop scale 0.4", {"teacher_momentum": 0.99, "crop_min_scale": 0.4}),
        ("small, EMA 0.99, order 4 (lambda held in radius)", {"teacher_momentum": 0.99,
                                                              "order": 4}),
        ("small recipe (momentum 0)", {}),
        ("small recipe, no predictor", {"predictor": False}),
    ]),
    # Table 5 of the paper, at our scale: one change from the small recipe with the
    # paper's EMA teacher (3 epochs)
    "table5": ({**FM, "epochs": 3, "teacher_momentum": 0.99, "feature_grid": 1}, [
        ("order 1", {"order": 1}), ("order 2", {"order": 2}), ("order 3", {"order": 3}),
        ("order 4", {"order": 4}), ("exact", {"order": None}),
        ("eps^2 4", {"eps_sq": 4.0}), ("eps^2 16", {"eps_sq": 16.0}),
        ("eps^2 64", {"eps_sq": 64.0}), ("eps^2 256", {"eps_sq": 256.0}),
        ("batch 64", {"batch_size": 64}), ("batch 128", {"batch_size": 128}),
        ("batch 256", {"batch_size": 256}), ("batch 512", {"batch_size": 512}),
        ("teacher momentum 0", {"teacher_momentum": 0.0}),
        ("no predictor", {"predictor": False}),
    ]),
    # the same learning-rate grid for every method (weight decay at the recipe's), on a
    # 1-epoch proxy
    "grid": ({**FM, "epochs": 1}, [
        (f"{m} lr {lr} wd {wd}", {"method": m, "base_lr": lr, "weight_decay": wd})
        for m in METHODS for lr, wd in GRID]),
    # every method at the small recipe's lr and wd (at its best grid point where the grid
    # was run: `best_of_grid`), equal budget
    "methods": ({**FM, "epochs": 3}, [(m, {"method": m}) for m in METHODS]),
    # where MEC's targets come from, at the "methods" rows' budget and learning rate (MEC's
    # best grid point): the small recipe's shared teacher behind a stop-gradient against
    # no stop-gradient (the gradient reaches both branches, as SimCLR's does), with and
    # without the predictor; SimCLR at its best grid point. hflip as those rows stored it
    # (they predate the field; on is fashion-mnist's default), so that they are reused
    "mec_teacher": ({**FM, "epochs": 3, "base_lr": 0.5, "hflip": True}, [
        ("stop-gradient, predictor (the small recipe)", {}),
        ("no stop-gradient, no predictor", {"teacher": "none", "predictor": False}),
        ("no stop-gradient, predictor", {"teacher": "none"}),
        ("stop-gradient, no predictor", {"predictor": False}),
        ("simclr", {"method": "simclr", "base_lr": 0.2}),
        # with no predictor, no stop-gradient doubles the gradient exactly (the two
        # directions of the loss are one function): is its gain the step size's?
        ("stop-gradient, no predictor, base lr 1.0", {"predictor": False, "base_lr": 1.0}),
    ]),
    # one change each from the small recipe (momentum 0) on the 3-epoch proxy, to size
    # the short runs: learning rate, weight decay, batch, crop scale
    "tune": ({**FM, "epochs": 3, "feature_grid": 1}, [
        ("small recipe", {}), ("base lr 1.0", {"base_lr": 1.0}),
        ("weight decay 1e-4", {"weight_decay": 1e-4}), ("batch 128", {"batch_size": 128}),
        ("crop scale 0.4", {"crop_min_scale": 0.4}),
    ]),
    # the size of the backbone's last feature map (the small recipe's feature grid)
    "pooling": ({**FM, "epochs": 3}, [
        ("grid 1 (global average pooling)", {"feature_grid": 1}),
        ("grid 2 (the small recipe)", {}), ("grid 4 (no pooling)", {"feature_grid": 4}),
    ]),
    # the targets of the README
    "targets": (FM, [
        ("defaults, 8 epochs", {"epochs": 8}),
        ("25 epochs (at most 30 minutes)", {"epochs": 25}),
    ]),
    "baselines": (FM, [("raw pixels", {"baseline": "pixels"}),
                       ("random init", {"baseline": "random"}),
                       ("random init, global pooling", {"baseline": "random",
                                                        "feature_grid": 1})]),
    "digits": ({"dataset": "digits", "backbone": "convnet", "batch_size": 128}, [
        ("MEC, 20 epochs", {"epochs": 20, "hflip": True, "crop_min_scale": None}),
        ("raw pixels", {"baseline": "pixels"}), ("random init", {"baseline": "random"})]),
    # the views of 8 x 8 digits: no mirror images, larger crops (the defaults since), 20
    # epochs, float32 whatever the CPU
    "digits_views": ({"dataset": "digits", "backbone": "convnet", "batch_size": 128,
                      "epochs": 20, "precision": "fp32"}, [
        ("flips, crop scale 0.2 (before)", {"hflip": True, "crop_min_scale": None}),
        ("no flips", {"hflip": False, "crop_min_scale": None}),
        ("crop scale 0.5", {"hflip": True, "crop_min_scale": 0.5}),
        ("no flips, crop scale 0.5 (the digits defaults)", {}),
        ("raw pixels", {"baseline": "pixels"})]),
    # the same, run before the small recipe pooled the last map to a 2x2 grid
    "methods_pooled": ({**FM, "epochs": 3, "feature_grid": 1},
                       [(m, {"method": m}) for m in METHODS] + [
                           ("mec, EMA 0.99", {"method": "mec", "teacher_momentum": 0.99})]),
    "targets_pooled": ({**FM, "feature_grid": 1}, [
        ("defaults, 8 epochs", {"epochs": 8}),
        ("8 epochs, base lr 1.0", {"epochs": 8, "base_lr": 1.0}),
        ("8 epochs, batch 128", {"epochs": 8, "batch_size": 128}),
        ("30 epochs (at most 30 minutes)", {"epochs": 30}),
    ]),
    "digits_pooled": ({"dataset": "digits", "backbone": "convnet", "batch_size": 128,
                       "feature_grid": 1}, [("MEC, 20 epochs", {"epochs": 20})]),
    "quick": ({"dataset": "digits", "backbone": "convnet", "batch_size": 64, "max_steps": 6},
              [("mec", {}), ("byol", {"method": "byol"}),
               ("raw pixels", {"baseline": "pixels"})]),
}


def best_of_grid(records: list[dict], method: str) -> dict:
    """The grid point with the best kNN top-1 for `method` ({} if none is recorded)."""
    rows = [r for r in records if r["group"] == "grid" and r["config"]["method"] == method]
    if not rows:
        return {}
    best = max(rows, key=lambda r: r["knn_top1"])
    return {"base_lr": best["config"]["base_lr"], "weight_decay": best["config"]["weight_decay"]}


def load_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return ""


def evaluate_source(source, config: TrainConfig) -> dict[str, float]:
    """kNN (k=200, T=0.1) and linear top-1 on the test split, features computed once."""
    tr = load_dataset(config.dataset, "train", config.data_dir, config.image_size)
    te = load_dataset(config.dataset, "test", config.data_dir, config.image_size)
    ftr, fte = features(source, tr.images), features(source, te.images)
    return {"knn_top1": knn(ftr, tr.labels, fte, te.labels)["top1"],
            "linear_top1": linear_probe(ftr, tr.labels, fte, te.labels)["top1"]}


def run_row(group: str, label: str, fields: dict, seed: int, base: dict) -> dict:
    fields = dict(fields)
    baseline = fields.pop("baseline", None)
    config = TrainConfig(**{**base, **fields, "seed": seed})
    record = {"group": group, "label": label, "seed": seed, "baseline": baseline,
              "config": config.model_dump(mode="json"), "commit": _commit(),
              "when": time.strftime("%Y-%m-%d %H:%M"), "threads": torch.get_num_threads(),
              "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    if baseline:
        train_set = load_dataset(config.dataset, "train", config.data_dir, config.image_size)
        side = image_size(config)
        source = raw_pixels(train_set, side) if baseline == "pixels" else \
            random_init(config.backbone, train_set, side, seed, config.feature_grid)
        return record | {"train_seconds": 0.0} | evaluate_source(source, config)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = train(config, out, resume=False)
        seconds = time.perf_counter() - started
        scores = evaluate_source(from_checkpoint(str(result.checkpoint)), config)
    return record | {"train_seconds": round(seconds, 1), "steps": result.steps,
                     "last": {k: round(v, 5) for k, v in result.last.items()}} | scores


def same_run(records: list[dict], group: str, label: str, fields: dict, seed: int,
             base: dict) -> dict | None:
    """A recorded run of the very same config and seed, filed under this row too (runs are
    deterministic: the same config and seed give the same figures), or None."""
    if "baseline" in fields:
        return None
    config = TrainConfig(**{**base, **fields, "seed": seed}).model_dump(mode="json")
    for r in records:  # a recorded config is read as today's (fields added since: defaults)
        if r.get("baseline") or r["seed"] != seed:
            continue
        if stored_config(r["config"]).model_dump(mode="json") == config:
            return r | {"group": group, "label": label,
                        "same_run_as": r.get("same_run_as") or [r["group"], r["label"]]}
    return None


def run(group: str, seeds: list[int], runs: Path, only: list[str] | None) -> None:
    base, rows = GROUPS[group]
    runs.parent.mkdir(parents=True, exist_ok=True)
    for label, fields in rows:
        if only and label not in only:
            continue
        if group == "methods":
            fields = {**fields, **best_of_grid(load_records(runs), fields["method"])}
        for seed in seeds:
            records = load_records(runs)
            if (group, label, seed) in {(r["group"], r["label"], r["seed"]) for r in records}:
                continue
            record = same_run(records, group, label, fields, seed, base) or \
                run_row(group, label, fields, seed, base)
            with runs.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps({k: record.get(k) for k in ("group", "label", "seed",
                  "train_seconds", "knn_top1", "linear_top1")}), flush=True)


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    t = torch.tensor(values, dtype=torch.float64)
    return f"{t.mean():.2f} ± {t.std():.2f}"


def table(records: list[dict], group: str) -> str:
    """One markdown table: a row per label (in the group's order), mean ± sd over seeds."""
    rows = [r for r in records if r["group"] == group]
    if not rows:
        return f"(no runs of group {group!r} recorded)\n"
    order = [label for label, _ in GROUPS[group][1]]
    labels = sorted({r["label"] for r in rows}, key=lambda s: order.index(s)
                    if s in order else len(order))
    lines = ["| run | seeds | kNN top-1 % | linear top-1 % | train s | threads | last loss |",
             "|---|---|---|---|---|---|---|"]
    for label in labels:
        rs = [r for r in rows if r["label"] == label]
        last = rs[-1].get("last") or {}
        same = rs[-1].get("same_run_as")
        name = f"{label} (the run of {same[0]}: {same[1]})" if same else label
        lines.append(f"| {name} | {len(rs)} | {_mean_sd([r['knn_top1'] for r in rs])} | "
                     f"{_mean_sd([r['linear_top1'] for r in rs])} | "
                     f"{sum(r['train_seconds'] for r in rs) / len(rs):.0f} | "
                     f"{rs[-1]['threads']} | {last.get('loss', float('nan')):.4f} |")
    return "\n".join(lines) + "\n"


def monitor_table(records: list[dict]) -> str:
    """What the online monitor cost each run that logged it (its share of the wall time)."""
    lines = ["| group | run | train s | monitor s | share | online kNN at the end |",
             "|---|---|---|---|---|---|"]
    for r in records:
        last = r.get("last") or {}
        if "monitor_seconds" in last and not r.get("same_run_as"):
            lines.append(f"| {r['group']} | {r['label']} | {r['train_seconds']:.0f} | "
                         f"{last['monitor_seconds']:.1f} | "
                         f"{100 * last['monitor_seconds'] / r['train_seconds']:.1f} % | "
                         f"{last['knn_top1']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a group's rows that are not recorded yet")
    r.add_argument("group", choices=list(GROUPS))
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--only", nargs="+", help="labels of the rows to run")
    r.add_argument("--runs", type=Path, default=RUNS)
    t = sub.add_parser("tables", help="print every group's table from the runs file")
    t.add_argument("--runs", type=Path, default=RUNS)
    args = parser.parse_args()
    if args.command == "run":
        run(args.group, args.seeds, args.runs, args.only)
    else:
        records = load_records(args.runs)
        for group in GROUPS:
            if any(rec["group"] == group for rec in records):
                print(f"### {group}\n\n{table(records, group)}")
        print(f"### monitor\n\n{monitor_table(records)}")


if __name__ == "__main__":
    main()
