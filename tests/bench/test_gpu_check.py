"""The GPU check is ready before a GPU is at hand: its dry run on the CPU runs the smallest
version of each step or skips it saying why, and writes its record."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(out: Path, *only: str) -> dict:
    done = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out),
                           *(("--only", *only) if only else ())],
                          env=os.environ | {"PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert json.loads(done.stdout.splitlines()[-1]) == \
        {name: step["status"] for name, step in record["steps"].items()}
    return record


def test_gpu_check__dry_run_reports_the_host_and_says_why_it_skips(tmp_path):
    record = _dry_run(tmp_path / "gpu.json", "cuda_tests", "ddp_nccl", "serving", "loss")
    steps = record["steps"]
    assert record["dry_run"] is True and list(steps) == ["environment", "cuda_tests",
                                                         "ddp_nccl", "serving", "loss"]
    assert steps["environment"]["torch"] and steps["environment"]["cpu"]["cores"] >= 1
    assert steps["cuda_tests"]["status"] == "skipped" and steps["cuda_tests"]["counts"]["skipped"]
    assert "GPU" in steps["ddp_nccl"]["reason"] and "GPU" in steps["serving"]["reason"]
    (row,) = steps["loss"]["rows"]
    assert row["ours_ms"] > 0 and row["rel_err_exact"] < 1e-3


def test_gpu_check__an_unknown_step_is_refused_naming_the_steps(tmp_path):
    done = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--only", "warp"],
                          env=os.environ | {"PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "unknown steps ['warp']" in done.stderr
    assert "train_resnet50_224" in done.stderr


@pytest.mark.slow  # three training loops at two points, each in a fresh process
def test_gpu_check__full_dry_run_times_each_training_loop(tmp_path):
    steps = _dry_run(tmp_path / "gpu.json")["steps"]
    for point in ("train_resnet50_224", "train_resnet18_32"):
        assert steps[point]["status"] == "passed" and steps[point]["device"] == "cpu"
        assert set(steps[point]["images_per_sec"]) == {"mec", "byol", "lightly-tuned"}
