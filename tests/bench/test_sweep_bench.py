"""bench/bench_sweep.py's tables: the recorded Fashion-MNIST sweeps print again, ranked by
the online kNN or by a test-set evaluation of each trial's model."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_sweep.py"


def _report(path: Path) -> str:
    return subprocess.run([sys.executable, str(BENCH), "--report", str(path)],
                          capture_output=True, text=True, timeout=120, check=True).stdout


def test_bench_sweep__the_recorded_runs_print_their_tables():
    records = sorted((ROOT / "docs" / "science" / "sweeps").glob("*.json"))
    assert records
    for path in records:
        record = json.loads(path.read_text())
        table = _report(path)
        for trial in record["trials"]:
            assert f"| {trial['number']} | {trial['params']['eps_sq']} |" in table
        assert f"{record['best']['value']:.2f} %" in table.splitlines()[-1]


def test_bench_sweep__an_evaluation_objective_shows_both_scores(tmp_path):
    trial = {"number": 0, "job_id": 2, "status": "succeeded", "value": 84.5, "online": 81.25,
             "params": {"eps_sq": 16, "base_lr": 1.0}, "minutes": 3.1}
    record = {"base": {"epochs": 1}, "space": {"eps_sq": {}, "base_lr": {}},
              "objective": {"metric": "knn_top1", "evaluation": {"protocol": "knn"}},
              "status": "succeeded", "minutes": 4.0, "trials": [trial],
              "best": trial | {"params": trial["params"]}}
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    table = _report(path)
    assert "ranked by the test-set knn top-1" in table
    assert "| 0 | 16 | 1.0 | succeeded | 81.25 % | 84.50 % | 3.1 |" in table
