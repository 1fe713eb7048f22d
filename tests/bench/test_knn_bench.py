"""bench/bench_knn.py --workers-memory: two real worker processes, and the shared index
really held once between them."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_knn.py"


def test_workers_memory__shared_workers_hold_the_index_once():
    out = subprocess.run([sys.executable, str(SCRIPT), "--workers-memory", "20000", "--dim",
                          "128", "--queries", "50"], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    index_mb = float(re.search(r"index file (\d+) MB", out).group(1))
    rows = re.findall(r"^\| (shared \(serving\)|a copy each) \| ([\d.]+) / ([\d.]+) \| "
                      r"([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert [r[0] for r in rows] == ["shared (serving)", "a copy each"] * 3
    shared = [float(r[3]) for r in rows if r[0].startswith("shared")]
    copied = [float(r[3]) for r in rows if r[0] == "a copy each"]
    assert index_mb >= 9
    # each pair of workers: with a copy each, about one index more between them
    assert all(c - s > 0.7 * index_mb for s, c in zip(shared, copied))
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
