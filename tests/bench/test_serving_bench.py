"""bench/bench_serving.py's figures: the overhead of each round comes from the two sides
measured in that round, and the reported figure is the median over rounds, with its range."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_serving.py"
spec = importlib.util.spec_from_file_location("bench_serving", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _side(throughput, p99=100.0, cores=None):
    return {"throughput": throughput, "p99_ms": p99, "errors": 0,
            "cores": cores or {"clients": 0.0, "frontend": 0.1, "worker": 1.8}}


def test_summarize__pairs_each_round_then_takes_medians():
    rounds = [  # the machine slows down in round 2: both sides move, the ratio holds
        {"torchserve": _side(90.0, 300), "in_process": _side(100.0, cores={"in_process": 2})},
        {"torchserve": _side(45.0, 500), "in_process": _side(50.0, cores={"in_process": 2})},
        {"torchserve": _side(99.0, 200), "in_process": _side(100.0, cores={"in_process": 2})},
    ]
    row = bench.summarize(32, rounds)
    assert row["overhead"] == {"median": 0.1, "min": 0.01, "max": 0.1}
    assert row["torchserve"]["median"] == 90.0 and row["in_process"]["median"] == 100.0
    assert row["p99_ms"] == {"median": 300.0, "min": 200.0, "max": 500.0}
    assert row["served_cores"] == {"clients": 0.0, "frontend": 0.1, "worker": 1.8}
    assert row["rounds"] == 3 and row["errors"] == 0
