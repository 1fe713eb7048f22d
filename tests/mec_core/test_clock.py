"""The step clock: phases are attributed where the time went, warm-up steps are kept out of
the throughput, and the training loop reports both per flush."""

import json
import time

import torch

from mec_core.clock import PHASES, StepClock
from mec_core.config import TrainConfig
from mec_core.train import train


def _step(clock: StepClock, seconds: dict[str, float]) -> None:
    clock.start()
    for phase in PHASES:
        time.sleep(seconds.get(phase, 0.0))
        clock.mark()


def test_clock__attributes_each_phase_and_skips_the_warm_up():
    clock = StepClock(torch.device("cpu"), warmup=2)
    _step(clock, {"forward": 0.3})  # slow warm-up steps: kept out of the figures
    _step(clock, {"forward": 0.3})
    assert clock.window() == (0, {})
    for _ in range(3):
        _step(clock, {"backward": 0.03, "data": 0.01})
    steps, phases = clock.window()
    assert steps == 3 and list(phases) == list(PHASES)
    assert 0.03 <= phases["backward"] < 0.1 and 0.01 <= phases["data"] < 0.05
    assert phases["forward"] < 0.05  # the warm-up's slow forward is not in the window
    assert clock.window() == (0, {})  # a window is read once
    assert 0.04 <= clock.seconds_per_step() < 0.15


def test_clock__a_run_shorter_than_the_warm_up_reports_its_warm_up_steps():
    clock = StepClock(torch.device("cpu"), warmup=2)
    _step(clock, {"optimizer": 0.02})
    assert clock.window() == (0, {})
    assert 0.02 <= clock.seconds_per_step() < 0.1


def test_train__flushes_report_images_per_sec_and_the_phase_split_after_the_warm_up(tmp_path):
    config = TrainConfig(dataset="synthetic", backbone="convnet", batch_size=16, epochs=1,
                         max_steps=8, proj_dim=32, pred_hidden_dim=16, train_limit=256,
                         log_every=2, checkpoint_every=100)
    result = train(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "images_per_sec" in r]
    assert [r["step"] for r in timed] == [4, 6, 8]  # the flush at step 2 ends the warm-up
    for r in timed:
        split = [r[f"time_{p}"] for p in PHASES]
        assert all(s > 0 for s in split)
        speed = r["images_per_sec"]
        assert abs(config.batch_size / sum(split) - speed) < 1e-6 * speed
        assert r["time_forward"] + r["time_backward"] > r["time_data"] + r["time_optimizer"]
    assert 0 < result.images_per_sec < 1e6
