"""The training benchmarks run end to end on a tiny backbone: `bench_train.py --only-ours`
prints its table, and `bench_peer.py` times our trainer and lightly's BYOL loop, each in its
own process, and reports median and range per loop."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
TINY = ["--backbone", "convnet", "--batch-size", "32", "--steps", "1"]


def _run(script: str, *args: str) -> str:
    return subprocess.run([sys.executable, str(BENCH / script), *TINY, *args],
                          capture_output=True, text=True, timeout=600, check=True).stdout


def test_bench_train__only_ours_prints_its_table():
    out = _run("bench_train.py", "--only-ours")
    assert "ours" in out and "baseline" not in out


def test_bench_peer__every_loop_is_timed_and_summarised():
    summary = json.loads(_run("bench_peer.py", "--warmup", "2", "--repeats", "2",
                              "--json").splitlines()[-1])
    assert set(summary["loops"]) == {"mec", "byol", "lightly", "lightly-tuned"}
    for loop in summary["loops"].values():
        assert len(loop["runs"]) == 2 and all(r > 0 for r in loop["runs"])
        assert loop["min"] <= loop["median"] <= loop["max"]
    assert summary["threads"] >= 1 and summary["batch"] == 32
