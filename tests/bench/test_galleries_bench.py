"""bench/bench_galleries.py end to end at a small size: the index's figures with recall
against brute force, and the adds and searches through a whole platform; the recorded runs
of the galleries and of the embed route's hop (issue 13's figures) print again."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_galleries.py"


@pytest.mark.slow  # a whole platform with a deployed model: about 1.5 minutes
def test_bench_galleries__measures_the_index_and_the_platform():
    out = subprocess.run([sys.executable, str(BENCH), "--sizes", "3000", "--dim", "32",
                          "--vectors", "1000", "--images", "70", "--json"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    record = json.loads(out.splitlines()[-1])
    (index,) = record["index"]
    assert index["items"] == 3000 and index["index"] == "exact"
    for case in ("all", "filter 10 %"):
        assert index[case]["recall_at_10"] == 1.0  # exact search is brute force
        assert 0 < index[case]["p50_ms"] <= index[case]["p99_ms"]
    platform = record["platform"]
    assert platform["vectors"] == 1000 and platform["images"] == 70
    for rate in ("add_vectors_per_s", "add_images_per_s", "import_images_per_s"):
        assert platform[rate] > 0
    assert platform["search by image"]["p50_ms"] > 0


def test_bench_galleries__report_prints_the_recorded_run_again():
    recorded = BENCH.parents[1] / "docs" / "performance" / "galleries" / "2026-12-01.json"
    out = subprocess.run([sys.executable, str(BENCH), "--report", str(recorded)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    record = json.loads(recorded.read_text())
    million = next(r for r in record["index"] if r["items"] == 1_000_000)
    assert million["index"] == "ivf" and million["filter 10 %"]["recall_at_10"] >= 0.99
    assert f"| 1,000,000 | ivf | {million['add_items_per_s']:,} |" in out


def test_bench_embed_route__report_prints_the_recorded_runs_again():
    bench = BENCH.with_name("bench_embed_route.py")
    folder = BENCH.parents[1] / "docs" / "performance" / "serving"
    runs = [folder / f"2026-12-01-embed-route-{name}.json" for name in ("uncached", "cached")]
    out = subprocess.run([sys.executable, str(bench), "--report", *map(str, runs)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    before, after = (json.loads(p.read_text()) for p in runs)
    assert after["ratio"]["median"] >= 0.85 > before["ratio"]["median"]
    assert after["api_cpu_ms_per_request"]["median"] < before["api_cpu_ms_per_request"]["median"]
    assert f"median {100 * after['ratio']['median']:.1f} %" in out
