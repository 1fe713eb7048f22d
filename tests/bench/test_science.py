"""bench/science.py in its quick mode: runs are recorded once and the tables come from them."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from mec_core.config import TrainConfig
from mec_core.data import load_dataset
from mec_core.train import setup

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "science.py"
sys.path.insert(0, str(SCRIPT.parent))  # as when run: its sibling modules import


def science(*args):
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_science__quick_group_records_every_run_once_and_tabulates_them(tmp_path):
    runs = tmp_path / "runs.jsonl"
    science("run", "quick", "--runs", str(runs))
    records = [json.loads(line) for line in runs.read_text().splitlines()]
    assert [r["label"] for r in records] == ["mec", "byol", "raw pixels"]
    for r in records:
        assert 0 < r["knn_top1"] <= 100 and 0 < r["linear_top1"] <= 100
        assert r["config"]["dataset"] == "digits" and r["seed"] == 0
        assert r["host"]["cores"] == os.cpu_count() and "flags" in r["host"]  # the CPU kind
    assert records[0]["steps"] == 6 and records[0]["train_seconds"] > 0
    assert records[1]["config"]["method"] == "byol"

    science("run", "quick", "--runs", str(runs))  # everything is recorded: nothing runs
    assert len(runs.read_text().splitlines()) == 3

    table = science("tables", "--runs", str(runs))
    assert "### quick" in table
    mec_row = next(line for line in table.splitlines() if line.startswith("| mec |"))
    assert f"{records[0]['knn_top1']:.2f}" in mec_row


def _science_module():
    spec = importlib.util.spec_from_file_location("science", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_science__tuning_scores_on_training_images_never_trained_on(tmp_path):
    science_module = _science_module()
    base, _ = science_module.GROUPS["quick_tune"]
    config = TrainConfig(**base)
    bank, queries = science_module.eval_sets(config, "val")
    trained = setup(config, tmp_path, resume=False).data  # what the trainer trains on
    split = load_dataset("digits", "train")
    assert torch.equal(bank.images, trained.images) and len(bank) == 1000
    # the queries are the rest of the train split: none of its images is trained on
    assert len(bank) + len(queries) == len(split)
    assert torch.equal(queries.images, split.images[len(bank):])
    assert torch.equal(queries.labels, split.labels[len(bank):])


def test_science__tuning_rows_are_scored_apart_from_test_rows(tmp_path):
    science_module = _science_module()
    runs = tmp_path / "runs.jsonl"
    science_module.run("quick_tune", [0], runs, None)
    science_module.run("quick_compare", [0, 1], runs, None)
    records = [json.loads(line) for line in runs.read_text().splitlines()]
    tune = [r for r in records if r["group"] == "quick_tune"]
    compare = [r for r in records if r["group"] == "quick_compare"]
    # the grid's 4 points, and for each method at least one beyond the edge where its
    # best was (a grid of two learning rates always has its best at an edge)
    assert len(tune) >= 6 and {r["eval"] for r in tune} == {"val"}
    assert len(compare) == 4 and {r["eval"] for r in compare} == {"test"}
    for method in ("mec", "simclr"):  # compared at the point with the best val kNN
        best = max((r for r in tune if r["config"]["method"] == method),
                   key=lambda r: r["knn_top1"])
        lrs = sorted(r["config"]["base_lr"] for r in tune if r["config"]["method"] == method)
        assert len(lrs) >= 3 and science_module.outward_point(tune, method, "quick_tune") \
            is None  # its best is inside the learning rates tried, or at the ladder's end
        ladder = science_module.LR_LADDER
        assert lrs[0] < best["config"]["base_lr"] < lrs[-1] or \
            best["config"]["base_lr"] in (ladder[0], ladder[-1])
        for r in compare:
            if r["label"] == method:
                assert r["config"]["base_lr"] == best["config"]["base_lr"]
                assert r["config"]["train_limit"] is None

    # a val row is never filed as a test row's run of the same config, nor the reverse
    base, rows = science_module.GROUPS["quick_tune"]
    label, fields = rows[0]
    assert science_module.same_run(tune, "quick_tune", label, fields, 0, base)["knn_top1"] \
        == tune[0]["knn_top1"]
    assert science_module.same_run(tune, "quick_compare", label, fields, 0, base) is None

    table = science("tables", "--runs", str(runs))
    tune_part, compare_part = table.split("### quick_compare")
    assert "### quick_tune" in tune_part and "val kNN top-1 %" in tune_part
    assert "val" not in compare_part.split("### monitor")[0]
    # the grid shows the val figures, the comparison the test figures with MEC - SimCLR
    assert f"{tune[0]['knn_top1']:.2f} / {tune[0]['linear_top1']:.2f}" in tune_part
    top1 = {(r["label"], r["seed"]): r["knn_top1"] for r in compare}
    seed0 = next(line for line in compare_part.splitlines() if line.startswith("| 0 |"))
    assert f"{top1['mec', 0]:.2f} /" in seed0 and f"{top1['simclr', 0]:.2f} /" in seed0
    assert f"{top1['mec', 0] - top1['simclr', 0]:+.2f} /" in seed0
    assert "| mean ± sd |" in compare_part


def test_science__a_best_point_at_an_edge_of_the_grid_asks_for_the_next_lr_beyond_it():
    science_module = _science_module()

    def rec(lr, wd, knn, method="mec"):
        return {"group": "g", "config": {"method": method, "base_lr": lr,
                                         "weight_decay": wd}, "knn_top1": knn}

    grid = [rec(0.2, 1e-5, 84.0), rec(0.5, 1e-5, 85.0), rec(0.2, 1e-4, 84.5),
            rec(0.5, 1e-4, 84.8), rec(0.2, 1e-5, 86.0, "simclr"), rec(0.5, 1e-5, 85.0, "simclr")]
    outward = science_module.outward_point
    # the best at the largest lr: the next one up, at the best point's weight decay
    assert outward(grid, "mec", "g") == {"base_lr": 1.0, "weight_decay": 1e-5}
    assert outward(grid, "simclr", "g") == {"base_lr": 0.1, "weight_decay": 1e-5}
    # inside once a point beyond it is worse; the edge moves when it is better
    assert outward(grid + [rec(1.0, 1e-5, 84.9)], "mec", "g") is None
    assert outward(grid + [rec(1.0, 1e-5, 85.5)], "mec", "g") == \
        {"base_lr": 2.0, "weight_decay": 1e-5}
    # the ladder's end stops it; a method with no record has no point
    assert outward([rec(2.0, 1e-5, 90.0), rec(1.0, 1e-5, 80.0)], "mec", "g") is None
    assert outward(grid, "byol", "g") is None
