"""The online monitor: effective rank, the held-out split, and its metrics in a real run."""

import json
import time

import pytest
import torch

import mec_core.monitor as monitor_module
from mec_core.config import HOLDOUT, TrainConfig
from mec_core.data import synthetic
from mec_core.monitor import BUDGET, effective_rank, holdout
from mec_core.train import train


def test_effective_rank__counts_equal_directions():
    assert effective_rank(torch.ones(50, 8)) == pytest.approx(1.0, rel=1e-3)  # collapsed
    q = torch.linalg.qr(torch.randn(64, 64)).Q
    assert effective_rank(q[:, :16] * 3) == pytest.approx(16.0, rel=1e-3)  # 16 equal ones
    skewed = q[:, :16] * torch.linspace(0.01, 1, 16)
    assert 1 < effective_rank(skewed) < 16


def test_holdout__the_last_tenth_never_trained_on():
    data = synthetic("train", n=500)
    kept, held = holdout(data)
    assert (len(kept), len(held)) == (450, 50)
    assert torch.equal(held.images, data.images[450:])
    big = synthetic("train", n=HOLDOUT * 20, size=8)
    assert len(holdout(big)[1]) == HOLDOUT


def test_monitor__logs_knn_and_rank_every_n_steps_and_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(monitor_module, "BUDGET", 1e9)  # tiny steps: no budget in the way
    config = TrainConfig(dataset="synthetic", backbone="convnet", batch_size=32, proj_dim=32,
                         pred_hidden_dim=16, train_limit=512, max_steps=7, monitor_every=3,
                         log_every=1)
    result = train(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    monitored = [r["step"] for r in rows if "knn_top1" in r]
    assert monitored == [3, 6, 7]
    for r in rows:
        if "knn_top1" in r:
            assert 0 <= r["knn_top1"] <= 100 and 1 <= r["effective_rank"] <= 256
            assert r["monitor_seconds"] > 0
    assert "knn_top1" in result.last
    # synthetic classes are separable: the held-out kNN is far above chance (10 %)
    assert rows[-1]["knn_top1"] > 30


def test_monitor__off_with_zero(tmp_path):
    config = TrainConfig(dataset="synthetic", backbone="convnet", batch_size=32, proj_dim=32,
                         train_limit=256, max_steps=3, monitor_every=0, log_every=1)
    train(config, tmp_path)
    rows = (tmp_path / "metrics.jsonl").read_text()
    assert "knn_top1" not in rows


def test_monitor__keeps_to_its_share_of_the_run(tmp_path):
    """Asked for every step of a run whose steps are cheap, the monitor skips evaluations
    so that it takes about BUDGET of the time, and still reports at the last step."""
    config = TrainConfig(dataset="synthetic", backbone="convnet", batch_size=32, proj_dim=32,
                         train_limit=512, max_steps=40, monitor_every=1, log_every=1)
    started = time.perf_counter()
    train(config, tmp_path)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    monitored = [r for r in rows if "knn_top1" in r]
    assert 1 < len(monitored) < 40 and monitored[-1]["step"] == 40
    spent = [r["monitor_seconds"] for r in monitored]  # cumulative
    one = max(b - a for a, b in zip([0.0] + spent, spent))  # the dearest single evaluation
    # the last due evaluation may start just under the budget, and the last step's is forced
    assert spent[-1] <= BUDGET * wall + 2 * one
