"""The training benchmarks run end to end on a tiny backbone: `bench_train.py --only-ours`
prints its table, and `bench_peer.py` times our trainer and lightly's BYOL loop, each in its
own process, and reports median and range per loop."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
TINY = ["--backbone", "convnet", "--batch-size", "32", "--steps", "1"]


def _run(script: str, *args: str) -> str:
    return subprocess.run([sys.executable, str(BENCH / script), *TINY, *args],
                          capture_output=True, text=True, timeout=600, check=True).stdout


def test_bench_train__only_ours_prints_its_table():
    out = _run("bench_train.py", "--only-ours")
    assert "ours" in out and "baseline" not in out


@pytest.mark.slow  # four training loops timed twice: about a minute
def test_bench_peer__every_loop_is_timed_and_summarised():
    summary = json.loads(_run("bench_peer.py", "--warmup", "2", "--repeats", "2",
                              "--json").splitlines()[-1])
    assert set(summary["loops"]) == {"mec", "byol", "lightly", "lightly-tuned"}
    for loop in summary["loops"].values():
        assert len(loop["runs"]) == 2 and all(r > 0 for r in loop["runs"])
        assert loop["min"] <= loop["median"] <= loop["max"]
    assert summary["threads"] >= 1 and summary["batch"] == 32


def test_bench_peer__report_prints_the_recorded_runs_again():
    recorded = sorted((BENCH.parent / "docs" / "performance" / "training").glob("peer_*.json"))
    out = subprocess.run([sys.executable, str(BENCH / "bench_peer.py"), "--report",
                          *map(str, recorded)], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    assert len(recorded) == 3
    assert "mec / lightly-tuned: 1.58x" in out  # the doc's figure at resnet18, 32 px, batch 256
    assert any(line.split()[:3] == ["lightly-tuned", "11.3", "11.1–12.0"]
               for line in out.splitlines() if line)
    assert "mec / lightly-tuned: 1.18x" in out and "mec / lightly-tuned: 1.55x" in out
