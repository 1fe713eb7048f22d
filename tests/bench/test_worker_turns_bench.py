"""bench/bench_worker_turns.py: processes really take turns on one export, with its
weights shared or copied, and the kept records print again."""

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_worker_turns.py"
sys.path.insert(0, str(SCRIPT.parent))  # as when run: its sibling modules import
spec = importlib.util.spec_from_file_location("bench_worker_turns", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_worker_turns"] = bench  # the spawned processes import it by name
spec.loader.exec_module(bench)


def test_turns__two_processes_each_time_their_forwards(tmp_path):
    def mec(*args):
        subprocess.run([sys.executable, "-m", "mec_core.cli", *args], check=True,
                       capture_output=True, timeout=300)
    mec("train", "--dataset", "synthetic", "--backbone", "convnet", "--batch-size", "16",
        "--max-steps", "1", "--train-limit", "32", "--out", str(tmp_path / "run"))
    mec("export", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "step_00000001.pt"),
        "--out", str(tmp_path / "export"))
    for processes, weights in [(2, "private"), (1, "shared")]:
        ms = bench.turns(tmp_path / "export", processes, weights, bench.SKIP + 10)
        assert 0 < ms < 1000
    for spin in (False, True):  # the idle process asleep on its pipe, or polling it
        started = time.perf_counter()
        ms = bench.turns(tmp_path / "export", 1, "shared", bench.SKIP + 10, idle_ms=20,
                         spin=spin)
        assert 0 < ms < 1000
        assert time.perf_counter() - started > (bench.SKIP + 10) * 0.02  # it did wait


def test_report__prints_each_repeat_and_the_median():
    kept = sorted((ROOT / "docs" / "performance" / "worker-turns").glob("*.json"))
    out = subprocess.run([sys.executable, str(SCRIPT), "--report", *map(str, kept)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "| 2 | private | 0 | 7.33 / 7.73 / 7.48 | 7.48 |" in out
    assert "| 2 | shared | 0 | 6.42 / 6.58 | 6.50 |" in out
    assert "'wait': 'spin'" in out and "| 1 | shared | 5 | 13.00 / 9.16 / 10.44 | 10.44 |" in out
