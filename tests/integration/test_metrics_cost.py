"""Logging every metric must not slow training: batched writes cost well under 1 ms per
step, against training steps of 100 ms and more (the CPU demo's convnet step)."""

import os
import re
import subprocess
import sys

import pytest


def per_step_ms(env_extra: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEC_")} | env_extra
    done = subprocess.run([sys.executable, "bench/bench_metrics.py", "--steps", "5000"],
                          env=env, capture_output=True, text=True, timeout=300, check=True)
    return float(re.search(r"([0-9.]+) ms per step", done.stdout).group(1))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_metric_writes__cost_under_one_ms_per_step(backend, tmp_path, request):
    env = {"MEC_DATA_DIR": str(tmp_path)}
    if backend == "postgres":
        env["MEC_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    assert per_step_ms(env) < 1.0
