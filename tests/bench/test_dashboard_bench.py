"""bench/bench_dashboard.py end to end on a small database: every page is timed in a real
browser until its content is on screen."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_dashboard.py"


@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs chromium-driver")
def test_bench_dashboard__times_every_page():
    out = subprocess.run([sys.executable, str(BENCH), "--jobs", "120", "--points", "2000",
                          "--repeats", "2", "--json"], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    record = json.loads(out.splitlines()[-1])
    assert record["jobs"] == 121 and record["points"] == 2000
    assert len(record["pages"]) == 6
    for page in record["pages"].values():
        assert 0 < page["min_s"] <= page["median_s"] <= page["max_s"]


def test_bench_dashboard__report_prints_the_recorded_run_again():
    recorded = BENCH.parents[1] / "docs" / "performance" / "dashboard" / "2026-12-01.json"
    out = subprocess.run([sys.executable, str(BENCH), "--report", str(recorded)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    record = json.loads(recorded.read_text())
    assert "1,001 jobs, one with 100,000 metric points" in out
    job = record["pages"]["job (100,000 points)"]
    assert f"| job (100,000 points) | {job['median_s']:.3f} " in out
    assert all(page["median_s"] < 1 for page in record["pages"].values())
