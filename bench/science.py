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
group's base; "pixels" and "random" rows are the untrained baselines. A run is scored on
the test split against the whole train split ("eval": "test"), except in the groups of
VAL, which tune: their runs train on the first `train_limit` images of the train split and
are scored on the rest of it, never trained on ("eval": "val"), so that choosing a setting
never looks at the test split. A group of TUNED_BY runs each method at the best point of
its tuning group.
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
from records import host

from mec_core.config import TrainConfig, image_size, stored_config, trained_images
from mec_core.data import ImageSet, load_dataset
from mec_core.evaluate import features, from_checkpoint, knn, linear_probe, random_init, raw_pixels
from mec_core.train import train

RUNS = Path(__file__).resolve().parents[1] / "docs" / "science" / "runs.jsonl"
FM = {"dataset": "fashion-mnist", "backbone": "convnet", "batch_size": 256}
METHODS = ("mec", "simclr", "byol", "simsiam", "barlow_twins", "vicreg")
TOP3 = ("mec", "simclr", "byol")  # MEC, the best contrastive and the best EMA method
# the tuning runs of Fashion-MNIST: the first 50,000 training images, scored on the last
# 10,000 (no online monitor, which would hold out images of its own)
FM_VAL = {**FM, "train_limit": 50_000, "monitor_every": 0}


def tuning_grid(methods, lrs, wds) -> list[tuple[str, dict]]:
    """The same grid of base lr x weight decay for every method: one row per point."""
    return [(point_label(m, lr, wd), {"method": m, "base_lr": lr, "weight_decay": wd})
            for m in methods for lr in lrs for wd in wds]


def point_label(method: str, lr: float, wd: float) -> str:
    """The label of a tuning point: 'mec lr 0.5 wd 1e-05'."""
    return f"{method} lr {lr} wd {wd}"


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
    # Table 5 again with the small recipe as it is now (2 x 2 feature grid, shared teacher:
    # momentum 0, exact log-det, base lr 0.5), one change each, 3 epochs; hflip as the
    # recipe's earlier rows stored it (the same views), so that those are reused
    "table5_small": ({**FM, "epochs": 3, "hflip": True}, [
        ("order 1", {"order": 1}), ("order 2", {"order": 2}), ("order 3", {"order": 3}),
        ("order 4", {"order": 4}), ("exact (the small recipe)", {}),
        ("eps^2 4", {"eps_sq": 4.0}), ("eps^2 64", {"eps_sq": 64.0}),
        ("teacher momentum 0.99", {"teacher_momentum": 0.99}),
        ("no predictor", {"predictor": False}),
        ("batch 64", {"batch_size": 64}), ("batch 128", {"batch_size": 128}),
        ("batch 512", {"batch_size": 512}),
    ]),
    # the same learning-rate grid for every method (weight decay at the recipe's), on a
    # 1-epoch proxy
    "grid": ({**FM, "epochs": 1}, tuning_grid(METHODS, (0.2, 0.5, 1.0), (1e-5,))),
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
    # MEC against SimCLR and BYOL at 8 epochs, each at the best of one grid of lr x weight
    # decay (the grid holds every method's best lr of the 1-epoch grid above), tuned on the
    # last 10,000 training images (and beyond the grid's learning rates where a method's
    # best is at an edge: `outward_point`); then seeds 0, 1, 2 at that point, on the test
    # split
    "tune8": ({**FM_VAL, "epochs": 8}, tuning_grid(TOP3, (0.2, 0.5), (1e-5, 1e-4))),
    "compare8": ({**FM, "epochs": 8}, [(m, {"method": m}) for m in TOP3]),
    "quick": ({"dataset": "digits", "backbone": "convnet", "batch_size": 64, "max_steps": 6},
              [("mec", {}), ("byol", {"method": "byol"}),
               ("raw pixels", {"baseline": "pixels"})]),
    # the tuning protocol at the quick group's scale (a test): 1,000 of the 1,437 training
    # digits, scored on the other 437
    "quick_tune": ({"dataset": "digits", "backbone": "convnet", "batch_size": 64,
                    "max_steps": 6, "train_limit": 1000, "monitor_every": 0},
                   tuning_grid(("mec", "simclr"), (0.2, 0.5), (1e-5,))),
    "quick_compare": ({"dataset": "digits", "backbone": "convnet", "batch_size": 64,
                       "max_steps": 6}, [(m, {"method": m}) for m in ("mec", "simclr")]),
}
VAL = {"tune8", "quick_tune"}  # the tuning groups, scored on held-out training images
# group -> the tuning group whose best point (per method) its rows run at
TUNED_BY = {"methods": "grid", "compare8": "tune8", "quick_compare": "quick_tune"}


def evaluation(group: str) -> str:
    return "val" if group in VAL else "test"


def best_of_grid(records: list[dict], method: str, group: str = "grid") -> dict:
    """The point of tuning `group` with the best kNN top-1 for `method` ({} if none is
    recorded)."""
    rows = [r for r in records if r["group"] == group and r["config"]["method"] == method]
    if not rows:
        return {}
    best = max(rows, key=lambda r: r["knn_top1"])
    return {"base_lr": best["config"]["base_lr"], "weight_decay": best["config"]["weight_decay"]}


# the learning rates a tuning grid may reach beyond its own (`outward_point`)
LR_LADDER = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def outward_point(records: list[dict], method: str, group: str) -> dict | None:
    """The next point a method's tuning needs when its best point lies at an edge of the
    learning rates tried at its weight decay: the next lr of LR_LADDER beyond that edge,
    at that weight decay (None when the best is inside, or the ladder ends). A best at an
    edge has not been found, only bounded; the rule is the same for every method."""
    best = best_of_grid(records, method, group)
    if not best:
        return None
    lrs = sorted({r["config"]["base_lr"] for r in records if r["group"] == group
                  and r["config"]["method"] == method
                  and r["config"]["weight_decay"] == best["weight_decay"]})
    if best["base_lr"] not in LR_LADDER:
        return None
    at = LR_LADDER.index(best["base_lr"])
    if best["base_lr"] == lrs[-1] and at + 1 < len(LR_LADDER):
        return {"base_lr": LR_LADDER[at + 1], "weight_decay": best["weight_decay"]}
    if best["base_lr"] == lrs[0] and at > 0:
        return {"base_lr": LR_LADDER[at - 1], "weight_decay": best["weight_decay"]}
    return None


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


def eval_sets(config: TrainConfig, evaluation: str) -> tuple[ImageSet, ImageSet]:
    """(bank, queries) of an evaluation: "test", the whole train split and the test split;
    "val", the images a run of `config` trains on (the first of the train split, in file
    order) and the rest of the train split, which it never sees."""
    tr = load_dataset(config.dataset, "train", config.data_dir, config.image_size)
    if evaluation == "test":
        return tr, load_dataset(config.dataset, "test", config.data_dir, config.image_size)
    seen = trained_images(config, len(tr))
    if seen == len(tr):
        raise ValueError(f"a val evaluation needs a train_limit below the {len(tr)} training "
                         f"images of {config.dataset}")
    return tr.head(seen), ImageSet(tr.images[seen:], tr.labels[seen:], tr.classes)


def evaluate_source(source, bank: ImageSet, queries: ImageSet) -> dict[str, float]:
    """kNN (k=200, T=0.1) and linear top-1 of `queries` against `bank`, features computed
    once."""
    fb, fq = features(source, bank.images), features(source, queries.images)
    return {"knn_top1": knn(fb, bank.labels, fq, queries.labels)["top1"],
            "linear_top1": linear_probe(fb, bank.labels, fq, queries.labels)["top1"]}


def run_row(group: str, label: str, fields: dict, seed: int, base: dict) -> dict:
    fields = dict(fields)
    baseline = fields.pop("baseline", None)
    config = TrainConfig(**{**base, **fields, "seed": seed})
    record = {"group": group, "label": label, "seed": seed, "baseline": baseline,
              "eval": evaluation(group), "config": config.model_dump(mode="json"),
              "commit": _commit(), "when": time.strftime("%Y-%m-%d %H:%M"),
              "threads": torch.get_num_threads(),
              "machine": f"{platform.machine()} {os.cpu_count()} cores", "host": host()}
    bank, queries = eval_sets(config, evaluation(group))
    if baseline:
        side = image_size(config)
        source = raw_pixels(bank, side) if baseline == "pixels" else \
            random_init(config.backbone, bank, side, seed, config.feature_grid)
        return record | {"train_seconds": 0.0} | evaluate_source(source, bank, queries)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = train(config, out, resume=False)
        seconds = time.perf_counter() - started
        scores = evaluate_source(from_checkpoint(str(result.checkpoint)), bank, queries)
    return record | {"train_seconds": round(seconds, 1), "steps": result.steps,
                     "last": {k: round(v, 5) for k, v in result.last.items()}} | scores


def same_run(records: list[dict], group: str, label: str, fields: dict, seed: int,
             base: dict) -> dict | None:
    """A recorded run of the very same config and seed and the same evaluation, filed under
    this row too (runs are deterministic: the same config and seed give the same figures),
    or None."""
    if "baseline" in fields:
        return None
    config = TrainConfig(**{**base, **fields, "seed": seed}).model_dump(mode="json")
    for r in records:  # a recorded config is read as today's (fields added since: defaults)
        if r.get("baseline") or r["seed"] != seed or \
                r.get("eval", "test") != evaluation(group):
            continue
        if stored_config(r["config"]).model_dump(mode="json") == config:
            return r | {"group": group, "label": label, "eval": evaluation(group),
                        "same_run_as": r.get("same_run_as") or [r["group"], r["label"]]}
    return None


def run(group: str, seeds: list[int], runs: Path, only: list[str] | None) -> None:
    base, rows = GROUPS[group]
    runs.parent.mkdir(parents=True, exist_ok=True)
    for label, fields in rows:
        if only and label not in only:
            continue
        if group in TUNED_BY:  # at the best point of the method's whole tuning grid
            tuning, records = TUNED_BY[group], load_records(runs)
            recorded = {r["label"] for r in records if r["group"] == tuning}
            todo = [t for t, f in GROUPS[tuning][1]
                    if f["method"] == fields["method"] and t not in recorded]
            if todo:
                print(f"{label}: skipped, {tuning} has not run {', '.join(todo)}", flush=True)
                continue
            while point := outward_point(records, fields["method"], tuning):
                outward = point_label(fields["method"], point["base_lr"], point["weight_decay"])
                print(f"{label}: the best of {tuning} is at an edge, running {outward}",
                      flush=True)
                file_run(runs, run_row(tuning, outward, {"method": fields["method"], **point},
                                       0, GROUPS[tuning][0]))
                records = load_records(runs)
            fields = {**fields, **best_of_grid(records, fields["method"], tuning)}
        for seed in seeds:
            records = load_records(runs)
            if (group, label, seed) in {(r["group"], r["label"], r["seed"]) for r in records}:
                continue
            file_run(runs, same_run(records, group, label, fields, seed, base)
                     or run_row(group, label, fields, seed, base))


def file_run(runs: Path, record: dict) -> None:
    """One run appended to the runs file as a line, and its figures printed."""
    with runs.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: record.get(k) for k in ("group", "label", "seed", "train_seconds",
                                                 "knn_top1", "linear_top1")}), flush=True)


def _mean_sd(values: list[float], sign: str = "") -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:{sign}.2f}"
    t = torch.tensor(values, dtype=torch.float64)
    return f"{t.mean():{sign}.2f} ± {t.std():.2f}"


def table(records: list[dict], group: str) -> str:
    """One markdown table: a row per label (in the group's order), mean ± sd over seeds."""
    rows = [r for r in records if r["group"] == group]
    if not rows:
        return f"(no runs of group {group!r} recorded)\n"
    order = [label for label, _ in GROUPS[group][1]]
    labels = sorted({r["label"] for r in rows}, key=lambda s: order.index(s)
                    if s in order else len(order))
    scored = "val " if evaluation(group) == "val" else ""  # never beside the test split's
    lines = [f"| run | seeds | {scored}kNN top-1 % | {scored}linear top-1 % | train s | "
             "threads | last loss |", "|---|---|---|---|---|---|---|"]
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


def grid_table(records: list[dict], group: str) -> str:
    """A tuning group's grid: a row per method, a column per (base lr, weight decay) of
    the grid and of the points run beyond its edges, kNN / linear top-1 % of seed 0 (on
    held-out training images for the groups of VAL); each method's best point (by kNN) in
    bold."""
    rows = [r for r in records if r["group"] == group and r["seed"] == 0]
    fields = [f for _, f in GROUPS[group][1]]  # every point, "–" where not yet recorded
    points = sorted({(f["base_lr"], f["weight_decay"]) for f in fields}  # and outward ones
                    | {(r["config"]["base_lr"], r["config"]["weight_decay"]) for r in rows})
    methods = list(dict.fromkeys(f["method"] for f in fields))
    scored = "val " if evaluation(group) == "val" else ""
    lines = [f"| method ({scored}kNN / linear top-1 %) | "
             + " | ".join(f"lr {lr}, wd {wd:g}" for lr, wd in points) + " |",
             "|---" * (len(points) + 1) + "|"]
    for method in methods:
        best = best_of_grid(rows, method, group)
        cells = []
        for lr, wd in points:
            r = next((r for r in rows if r["config"]["method"] == method
                      and (r["config"]["base_lr"], r["config"]["weight_decay"]) == (lr, wd)),
                     None)
            cell = f"{r['knn_top1']:.2f} / {r['linear_top1']:.2f}" if r else "–"
            bold = best == {"base_lr": lr, "weight_decay": wd}
            cells.append(f"**{cell}**" if bold else cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_table(records: list[dict], group: str) -> str:
    """A comparison group per seed: kNN / linear top-1 % of each method (at its tuned
    point), mean ± sd over seeds, and the first method's difference to each other one,
    paired by seed (over the seeds both have)."""
    rows = [r for r in records if r["group"] == group]
    methods = [label for label, _ in GROUPS[group][1] if any(r["label"] == label for r in rows)]
    if not methods:
        return f"(no runs of group {group!r} recorded)\n"
    top1 = {(r["label"], r["seed"]): (r["knn_top1"], r["linear_top1"]) for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    first, others = methods[0], methods[1:]

    def cell(pairs: list[tuple[float, float]], sign: str = "") -> str:
        return " / ".join(_mean_sd([p[i] for p in pairs], sign) for i in (0, 1))

    def diffs(method: str, among: list[int]) -> list[tuple[float, float]]:
        return [(top1[first, s][0] - top1[method, s][0], top1[first, s][1] - top1[method, s][1])
                for s in among if (first, s) in top1 and (method, s) in top1]

    point = {m: next(r["config"] for r in rows if r["label"] == m) for m in methods}
    lines = ["| seed | " + " | ".join(methods) + " | "
             + " | ".join(f"{first} − {m}" for m in others) + " |",
             "|---" * (1 + len(methods) + len(others)) + "|",
             "| tuned at | " + " | ".join(f"lr {point[m]['base_lr']}, wd "
                                         f"{point[m]['weight_decay']:g}" for m in methods)
             + " |" * (len(others) + 1)]
    for s in seeds:
        lines.append(f"| {s} | " + " | ".join(cell([top1[m, s]]) if (m, s) in top1 else "–"
                                              for m in methods) + " | "
                     + " | ".join(cell(diffs(m, [s]), "+") for m in others) + " |")
    lines.append("| mean ± sd | "
                 + " | ".join(cell([top1[m, s] for s in seeds if (m, s) in top1])
                              for m in methods) + " | "
                 + " | ".join(cell(diffs(m, seeds), "+") for m in others) + " |")
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
                if group in TUNED_BY.values():
                    print(f"{group}, the grid:\n\n{grid_table(records, group)}")
                if group in TUNED_BY:
                    print(f"{group}, paired by seed:\n\n{paired_table(records, group)}")
        print(f"### monitor\n\n{monitor_table(records)}")


if __name__ == "__main__":
    main()
