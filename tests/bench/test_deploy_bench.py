"""bench/bench_deploy.py end to end on digits: a deploy's phases add up to its time, the
progress reports cover every image, the deploy after an evaluation reuses its features,
and the kept 60k records print again."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_deploy.py"


def test_bench_deploy__phases_of_a_small_reference_set():
    out = subprocess.run([sys.executable, str(BENCH), "--dataset", "digits", "--limit", "600",
                          "--after-evaluation", "--json"], capture_output=True, text=True,
                         timeout=600, check=True).stdout
    record = json.loads(out.splitlines()[-1])
    seconds = record["seconds"]
    assert record["images"] == 600 and record["progress_reports"] == 3  # batches of 256
    assert abs(seconds["before"] + seconds["embed"] + seconds["after"] - seconds["deploy"]) \
        < 0.5 + 0.2 * seconds["deploy"]
    assert seconds["bare_model"] > 0 and record["embed_over_bare"] > 0
    assert record["host"]["cores"] >= 1 and record["precision"] == "float32"
    # the bench fails unless the second deploy reused the evaluation's features
    assert seconds["evaluation"] > 0 and seconds["keep"] >= 0 and seconds["deploy_reusing"] > 0
    assert record["command"].endswith("--after-evaluation")


def test_bench_deploy__report_prints_the_recorded_run_again():
    kept = sorted((ROOT / "docs" / "performance" / "deploy").glob("*.json"))
    out = subprocess.run([sys.executable, str(BENCH), "--report", *map(str, kept)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "60,000 images of fashion-mnist" in out and "| 272.3 s |" in out
    assert "| 246.4 s | 1.2 s | 25.4 s | 10.7 |" in out  # the deploy after an evaluation
