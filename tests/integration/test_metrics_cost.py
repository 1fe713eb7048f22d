"""Logging every metric must not slow training by more than a few percent: the batched
writes of one step cost under 2 % of the smallest real training step (the CPU demo's
convnet at batch 256), both measured now, on this machine."""

import os
import re
import subprocess
import sys

import pytest

from mec_core.config import TrainConfig
from mec_core.train import train


@pytest.fixture(scope="module")
def step_ms(tmp_path_factory):
    config = TrainConfig(dataset="synthetic", backbone="convnet", batch_size=256,
                         proj_dim=512, max_steps=4, epochs=1, log_every=10)
    result = train(config, tmp_path_factory.mktemp("step"))
    return 1e3 * config.batch_size / result.images_per_sec


def metrics_ms(env_extra: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEC_")} | env_extra
    done = subprocess.run([sys.executable, "bench/bench_metrics.py", "--steps", "5000"],
                          env=env, capture_output=True, text=True, timeout=300, check=True)
    return float(re.search(r"([0-9.]+) ms per step", done.stdout).group(1))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_metric_writes__cost_under_two_percent_of_a_training_step(backend, tmp_path, request,
                                                                   step_ms):
    env = {"MEC_DATA_DIR": str(tmp_path)}
    if backend == "postgres":
        env["MEC_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    cost = metrics_ms(env)
    assert cost < 0.02 * step_ms, f"{cost:.2f} ms of metric writes per {step_ms:.0f} ms step"
