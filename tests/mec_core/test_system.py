"""System figures of a training run: what a reading holds on a CPU and on CUDA, that
the trainer logs them at each flush, and that reading them is cheap next to a step."""

from __future__ import annotations

import json
import time

import pytest
import torch

from mec_core import system
from mec_core.config import TrainConfig
from mec_core.system import SystemStats
from mec_core.train import train

CPU_KEYS = {"system_cpu_percent", "system_rss_mb"}


def test_read__cpu_process_figures_and_no_gpu_ones_on_a_cpu():
    stats = SystemStats(torch.device("cpu"))
    busy_until = time.process_time() + 0.2
    while time.process_time() < busy_until:  # burn CPU, so the next reading shows it
        pass
    values = stats.read()
    assert set(values) == CPU_KEYS
    assert values["system_cpu_percent"] > 20
    assert values["system_rss_mb"] > 50  # torch alone takes more


def test_nvml_handle__none_without_cuda_or_nvml(monkeypatch):
    assert system._nvml_handle(torch.device("cpu")) is None
    monkeypatch.setattr(system, "pynvml", None)  # nvidia-ml-py not installed
    assert system._nvml_handle(torch.device("cuda", 0)) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="a host with a GPU has figures")
def test_device_figures__none_without_a_driver_or_without_nvidia_ml_py(monkeypatch):
    assert system.device_figures() == []  # here NVML's library is missing: nvmlInit raises
    monkeypatch.setattr(system, "pynvml", None)
    assert system.device_figures() == []


@pytest.mark.cuda
def test_read__gpu_memory_and_nvml_figures_on_cuda():
    device = torch.device("cuda", 0)
    x = torch.ones(64, 2**20, device=device)  # 256 MiB held by the caching allocator
    values = SystemStats(device).read()
    assert values["system_gpu_memory_mb"] >= 256
    assert 0 <= values["system_gpu_util_percent"] <= 100  # NVML is there with a driver
    assert values.get("system_gpu_power_w", 1.0) > 0
    gpus = system.device_figures()
    assert gpus and gpus[0]["memory_used_bytes"] >= 256 * 2**20
    del x


def test_due__at_most_every_every_s():
    stats = SystemStats(torch.device("cpu"), every_s=0.2)
    assert not stats.due()  # the first reading covers at least every_s
    time.sleep(0.25)
    assert stats.due()
    stats.read()
    assert not stats.due()
    assert SystemStats(torch.device("cpu"), every_s=0).due()


def test_train__figures_at_the_last_step_when_the_run_is_shorter_than_every_s(tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(system, "EVERY_S", 3600.0)
    config = TrainConfig(dataset="synthetic", backbone="convnet", batch_size=16, epochs=1,
                         max_steps=4, proj_dim=32, pred_hidden_dim=16, train_limit=256,
                         log_every=2, monitor_every=0, device="cpu")
    train(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if set(r) >= CPU_KEYS] == [4]


def test_train__each_flush_logs_the_system_figures_for_a_cost_under_one_percent(
        tmp_path, monkeypatch):
    """One run, read at every flush (the worst case): the time spent reading the figures
    against the run's training steps."""
    monkeypatch.setattr(system, "EVERY_S", 0.0)
    spent = []
    read = SystemStats.read

    def timed(self):
        start = time.perf_counter()
        values = read(self)
        spent.append(time.perf_counter() - start)
        return values
    monkeypatch.setattr(SystemStats, "read", timed)
    config = TrainConfig(dataset="synthetic", backbone="convnet", batch_size=32, epochs=1,
                         max_steps=20, proj_dim=32, pred_hidden_dim=16, train_limit=960,
                         monitor_every=0, checkpoint_every=1000, device="cpu")  # log_every: default
    result = train(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in rows if set(r) >= CPU_KEYS]
    assert set(range(config.log_every, result.steps + 1, config.log_every)) <= set(logged)
    assert logged[-1] == result.steps == 20  # and at epochs' ends
    assert len(spent) == len(logged)
    step_s = config.batch_size / result.images_per_sec
    ratio = sum(spent) / (step_s * result.steps)
    print(f"system figures: {1e3 * sum(spent) / len(spent):.3f} ms per reading, every "
          f"{config.log_every} steps of {1e3 * step_s:.1f} ms: {100 * ratio:.3f} % of training")
    assert ratio < 0.01
