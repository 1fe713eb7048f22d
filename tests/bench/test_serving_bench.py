"""bench/bench_serving.py's figures: the overhead of each round comes from the two sides
measured in that round, and the reported figure is the median over rounds, with its range."""

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_serving.py"
sys.path.insert(0, str(SCRIPT.parent))  # as when run: its sibling modules import
spec = importlib.util.spec_from_file_location("bench_serving", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _side(throughput, p99=100.0, cores=None, p50=20.0):
    return {"throughput": throughput, "p99_ms": p99, "p50_ms": p50, "errors": 0,
            "cores": cores or {"clients": 0.0, "frontend": 0.1, "worker": 1.8}}


def test_summarize__pairs_each_round_then_takes_medians():
    rounds = [  # the machine slows down in round 2: both sides move, the ratio holds
        {"torchserve": _side(90.0, 300, p50=19), "in_process": _side(
            100.0, cores={"in_process": 2}, p50=12)},
        {"torchserve": _side(45.0, 500, p50=40), "in_process": _side(
            50.0, cores={"in_process": 2}, p50=25)},
        {"torchserve": _side(99.0, 200, p50=18), "in_process": _side(
            100.0, cores={"in_process": 2}, p50=11)},
    ]
    row = bench.summarize(32, rounds)
    assert row["overhead"] == {"median": 0.1, "min": 0.01, "max": 0.1}
    assert row["torchserve"]["median"] == 90.0 and row["in_process"]["median"] == 100.0
    assert row["p99_ms"] == {"median": 300.0, "min": 200.0, "max": 500.0}
    assert row["p50_ms"] == {"torchserve": {"median": 19, "min": 18, "max": 40},
                             "in_process": {"median": 12, "min": 11, "max": 25}}
    assert "| 19.0 / 12.0 |" in bench.markdown({"setup": {}, "rows": [row]})
    assert row["served_cores"] == {"clients": 0.0, "frontend": 0.1, "worker": 1.8}
    assert row["rounds"] == 3 and row["errors"] == 0


BUSY = """
import json, time
def encode():  # about half the time in json's encoder, the rest asleep (idle)
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        json.dumps({"x": [0.1] * 512}, indent=2)
print("ready", flush=True)
while True:
    encode()
    time.sleep(0.05)
"""


def test_sampler__splits_a_process_time_into_phases_and_idle(tmp_path):
    worker = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "ready"
        shares = bench.Sampler([worker.pid], 3, tmp_path).shares()
    finally:
        worker.kill()
    assert set(shares) == {name for name, _ in bench.PHASES} | {bench.OTHER, bench.IDLE}
    assert 0.3 < shares["encode JSON"] < 0.7 and 0.3 < shares[bench.IDLE] < 0.7
    assert shares["forward"] == 0 and abs(sum(shares.values()) - 1) < 0.01


def test_profile_markdown__one_row_per_side_and_point():
    phases = dict.fromkeys([name for name, _ in bench.PHASES] + [bench.OTHER, bench.IDLE], 0.0)
    side = {"throughput": 100.0, "phases": phases | {"forward": 0.9, bench.IDLE: 0.1}}
    record = {"setup": {}, "profile": [{"concurrency": 32, "in_process": side,
                                        "torchserve": side | {"queue_ms": 150.0,
                                                              "latency_ms": 220.0}}]}
    rows = bench.markdown(record).splitlines()[3:]
    assert rows[0].startswith("| 32 | in-process | 100.0 | 90.0 % |")
    assert rows[0].endswith("| – | – |")
    assert rows[1].startswith("| 32 | torchserve |") and rows[1].endswith("| 150.0 | 220.0 |")


def test_host__records_the_instructions_torch_was_kept_to(monkeypatch):
    """An AVX2-only CPU emulated on a newer one says so in every record of its runs."""
    import records

    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert "limited_to" not in records.host()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert records.host()["limited_to"] == {"ATEN_CPU_CAPABILITY": "avx2",
                                            "ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_host__tells_apart_cpus_of_one_name():
    """One model name ("Intel(R) Xeon(R) Processor") covers several generations: the record
    keeps the family and model numbers the kernel reads from the CPU, as lscpu prints them."""
    import records

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    expected = f"{fields['CPU family'].strip()}/{fields['Model'].strip()}"
    assert records.host()["family_model"] == expected
