"""bench/bench_ray.py: the install figure from the distributions installed here, and the
table reprinted from the kept record (the measured run takes minutes: its command and
figures are in docs/performance.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_ray.py"


def test_bench_ray__install_counts_what_the_ray_extra_adds_to_the_platform():
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install '.[ray]')")
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_ray
    finally:
        sys.path.remove(str(SCRIPT.parent))
    added = bench_ray._closure("ray", ("train",)) - bench_ray._closure("mec-platform")
    assert {"ray", "pyarrow"} <= added and "torch" not in added and "numpy" not in added
    figure = bench_ray.install()
    assert figure["distributions"] == len(added) and figure["megabytes"] > 100


def test_bench_ray__reprints_the_kept_record():
    records = sorted((ROOT / "docs" / "performance" / "ray").glob("*.json"))
    record = json.loads(records[-1].read_text())
    assert record["command"].startswith("python bench/bench_ray.py") and record["host"]["cpu"]
    table = subprocess.run([sys.executable, str(SCRIPT), "--report", str(records[-1])],
                           capture_output=True, text=True, check=True).stdout
    lost = record["lost_node"]["lost_to_resumed_step_seconds"]
    assert "| install: what the `ray` extra adds |" in table and f"| {lost:.1f} s |" in table
