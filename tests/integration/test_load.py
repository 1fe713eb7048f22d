"""The control plane under concurrent load (bench/bench_api_load.py against a real API
process on PostgreSQL + Redis): no request fails."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench" / "bench_api_load.py"


def load(submissions: int, reads: int) -> dict[str, dict]:
    done = subprocess.run([sys.executable, str(BENCH), "--submissions", str(submissions),
                           "--reads", str(reads), "--json"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {r["load"]: r for r in json.loads(done.stdout.splitlines()[-1])}


def test_concurrent_submissions_and_reads_beyond_the_connection_pool__no_errors():
    # 300 reads at once: far more requests than sessions (40) and connections (50)
    results = load(100, 300)
    assert [r["errors"] for r in results.values()] == [0, 0, 0], results


@pytest.mark.slow
def test_200_submissions_and_1000_reads_at_once__no_errors():
    results = load(200, 1000)
    assert [r["errors"] for r in results.values()] == [0, 0, 0], results
