"""bench/science.py in its quick mode: runs are recorded once and the tables come from them."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "science.py"


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
    assert records[0]["steps"] == 6 and records[0]["train_seconds"] > 0
    assert records[1]["config"]["method"] == "byol"

    science("run", "quick", "--runs", str(runs))  # everything is recorded: nothing runs
    assert len(runs.read_text().splitlines()) == 3

    table = science("tables", "--runs", str(runs))
    assert "### quick" in table
    mec_row = next(line for line in table.splitlines() if line.startswith("| mec |"))
    assert f"{records[0]['knn_top1']:.2f}" in mec_row
