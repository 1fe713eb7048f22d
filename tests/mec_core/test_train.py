"""The training loop: metrics, checkpoints, exact resume, cancellation, divergence, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mec_core.train as train_module
from mec_core import checkpoint
from mec_core.config import TrainConfig
from mec_core.models import MECModel
from mec_core.train import Callbacks, TrainingDiverged, train

TINY = dict(dataset="synthetic", backbone="convnet", batch_size=16, epochs=1, max_steps=6,
            proj_dim=32, pred_hidden_dim=16, train_limit=256, log_every=2,
            checkpoint_every=100, warmup_epochs=0.1, lambda_warmup_epochs=0.2,
            precision="fp32", device="cpu")  # pinned: "auto" picks by the host's CPU and GPU
PRECISIONS = ["fp32", "bf16"]  # bf16 autocast runs on any CPU (natively or emulated)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class StopAt(Callbacks):
    def __init__(self, step: int) -> None:
        self.step = step
        self.seen: list[int] = []

    def on_metrics(self, records) -> None:
        self.seen += [r.step for r in records]

    def should_stop(self, step: int) -> bool:
        return step >= self.step


@pytest.mark.parametrize("precision", PRECISIONS)
def test_train__writes_every_step_and_a_final_checkpoint(tmp_path, precision):
    config = TrainConfig(**(TINY | {"precision": precision}))
    result = train(config, tmp_path)
    rows = _metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "coding_length", "spectral_norm", "lr", "lambda_inv"} <= rows[0].keys()
    assert "teacher_momentum" not in rows[0]  # the small recipe shares MEC's teacher weights
    assert "knn_top1" in rows[-1] and "effective_rank" in rows[-1]
    assert result.steps == 6 and not result.stopped
    assert result.checkpoint == checkpoint.step_path(tmp_path / "checkpoints", 6)
    state = checkpoint.load(result.checkpoint)
    assert state["step"] == 6 and TrainConfig(**state["config"]) == config
    assert {"model", "optimizer", "rng", "normalization"} <= state.keys()
    # autocast's dtypes stay out of the state: float32 weights, buffers, optimizer moments
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    assert all(isinstance(v, float) and v == v for r in rows for k, v in r.items()
               if k not in ("step", "epoch"))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_train__resume_gives_exactly_the_uninterrupted_losses(tmp_path, precision):
    config = TrainConfig(**(TINY | {"precision": precision}))
    train(config, tmp_path / "straight")
    stopper = StopAt(3)
    first = train(config, tmp_path / "resumed", stopper)
    assert first.stopped and first.steps == 3
    assert first.checkpoint.name == "step_00000003.pt"
    second = train(config, tmp_path / "resumed")
    assert second.steps == 6
    straight, resumed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]  # none duplicated or lost
    for a, b in zip(straight, resumed):
        assert a["loss"] == b["loss"] and a["coding_length"] == b["coding_length"]


def test_train__resume_drops_metrics_written_after_the_checkpoint(tmp_path):
    config = TrainConfig(**(TINY | {"checkpoint_every": 2}))
    train(config, tmp_path / "straight")
    train(config, tmp_path / "crashed", StopAt(5))
    # a crash after step 5's metrics were written but before its checkpoint was
    (tmp_path / "crashed" / "checkpoints" / "step_00000005.pt").unlink()
    train(config, tmp_path / "crashed")
    rows = _metrics(tmp_path / "crashed")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == [r["loss"] for r in _metrics(tmp_path / "straight")]


def test_train__a_partial_checkpoint_file_is_ignored(tmp_path):
    config = TrainConfig(**TINY)
    train(config, tmp_path, StopAt(3))
    # a crash in the middle of torch.save leaves only the temporary file behind
    (tmp_path / "checkpoints" / ".step_00000005.pt.123.tmp").write_bytes(b"\x80\x02garbage")
    assert checkpoint.latest(tmp_path / "checkpoints").name == "step_00000003.pt"
    assert train(config, tmp_path).steps == 6


def test_train__nan_loss_stops_with_a_clear_error_and_a_good_checkpoint(tmp_path, monkeypatch):
    """Divergence is injected into the real model: the predictor outputs NaN from step 5."""
    real_build = MECModel.from_config
    calls = {"n": 0}

    def build_diverging(config):
        model = real_build(config)

        def poison(module, inputs, output):
            calls["n"] += 1
            return output * float("nan") if calls["n"] > 8 else output  # 2 calls a step

        model.predictor.register_forward_hook(poison)
        return model

    monkeypatch.setattr(train_module.MECModel, "from_config", staticmethod(build_diverging))
    config = TrainConfig(**(TINY | {"checkpoint_every": 2, "log_every": 1}))
    with pytest.raises(TrainingDiverged, match=r"not finite at step 5.*step_00000004\.pt"):
        train(config, tmp_path)
    good = checkpoint.load(checkpoint.latest(tmp_path / "checkpoints"))
    assert good["step"] == 4
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_train__batch_larger_than_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="batch_size 512 exceeds the 256 training images"):
        train(TrainConfig(**(TINY | {"batch_size": 512, "monitor_every": 0})), tmp_path)


@pytest.mark.parametrize("overrides", [
    {"order": None}, {"teacher_momentum": 0.0}, {"predictor": False}, {"optimizer": "lars"},
    {"precision": "bf16"},
])
def test_train__options_of_the_recipe_and_ablations_run(tmp_path, overrides):
    result = train(TrainConfig(**(TINY | {"max_steps": 2} | overrides)), tmp_path)
    assert result.steps == 2
    assert all(v == v for v in result.last.values())  # finite, not NaN


def _torchrun(nproc: int, out: Path, config: dict) -> None:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in (config | {"processes": nproc}).items()]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "mec_core.cli", "train", f"--out={out}", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


# How far a 2-process run may drift from the 1-process run of the same global batch over
# 4 steps. float32: the two reduction orders' rounding (about 1e-7 on the O(1) cosine terms
# the loss is a difference of). bf16: the network's activations are rounded to 8 bits of
# mantissa (2^-8 ~ 4e-3 relative), and the two runs round different partial sums; measured
# on a 2-core AMD EPYC (avx512_bf16): at most 1.3e-3 on the loss and 3.8e-3 on the coding
# length, about what a single process's bf16 run differs from its fp32 run (1.0e-3, 3.0e-3),
# and 4e-3 relative on the running variances (weights: rtol 1e-2, 2.5 x bf16's rounding).
DRIFT = {"fp32": {"first": 1e-6, "loss": 1e-4, "coding_length": 1e-4, "weights": (1e-3, 1e-5)},
         "bf16": {"first": 4e-3, "loss": 4e-3, "coding_length": 1.2e-2, "weights": (1e-2, 1e-3)}}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_train__two_gloo_processes_match_one_process_with_the_same_global_batch(
        tmp_path, precision):
    """m is the global batch: gathered embeddings and global BatchNorm statistics (in
    float32 under bf16 autocast too) make a 2-process run follow the 1-process losses. (A
    small learning rate keeps rounding differences of the two reduction orders from growing
    chaotically.)"""
    config = TINY | {"max_steps": 4, "log_every": 1, "base_lr": 0.01, "precision": precision,
                     "monitor_every": 2}
    _torchrun(1, tmp_path / "one", config)
    _torchrun(2, tmp_path / "two", config)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    drift = DRIFT[precision]
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], abs=drift["first"])
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], abs=drift["loss"])
        assert b["coding_length"] == pytest.approx(a["coding_length"],
                                                   abs=drift["coding_length"])
    assert two[-1]["knn_top1"] == two[-1]["knn_top1"]  # the monitor ran on a finite backbone
    w1 = checkpoint.load(tmp_path / "one" / "checkpoints" / "step_00000004.pt")["model"]
    w2 = checkpoint.load(tmp_path / "two" / "checkpoints" / "step_00000004.pt")["model"]
    rtol, atol = drift["weights"]
    for name, value in w1.items():
        if value.is_floating_point():
            assert w2[name].dtype == value.dtype == torch.float32, name
            assert torch.allclose(value, w2[name], rtol=rtol, atol=atol), name


def test_train__refuses_a_world_that_is_not_the_configured_number_of_processes(tmp_path):
    with pytest.raises(ValueError, match="asks for 2 process.*1 were started.*nproc-per-node=2"):
        train(TrainConfig(**(TINY | {"processes": 2})), tmp_path)


def test_train__an_ema_teacher_under_bf16_autocast_stays_float32_and_follows(tmp_path):
    """BYOL's EMA teacher is updated from the student's float32 weights, never from
    autocast's bf16 copies: it stays float32, finite, and moves toward the student."""
    config = TrainConfig(**(TINY | {"method": "byol", "precision": "bf16", "max_steps": 3}))
    state = checkpoint.load(train(config, tmp_path).checkpoint)["model"]
    teacher = {k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")}
    assert teacher and all(v.dtype == torch.float32 and torch.isfinite(v).all()
                           for v in teacher.values() if v.is_floating_point())
    torch.manual_seed(config.seed)  # the trainer's initial weights
    initial = MECModel.from_config(config).state_dict()
    assert all(torch.equal(initial[f"teacher.{k}"], initial[f"encoder.{k}"]) for k in teacher)
    moved = [k for k, v in teacher.items() if v.is_floating_point() and "running" not in k
             and not torch.equal(v, initial[f"teacher.{k}"])]
    assert moved  # the update reached it
    for k in moved:  # and it lies between its start and the student (momentum 0.99)
        start, student = initial[f"teacher.{k}"], state[f"encoder.{k}"]
        assert (teacher[k] - start).norm() < (student - start).norm(), k


class InterruptAfter(StopAt):
    """Asks to abandon the step under way once step `step` has been reported."""

    def should_stop(self, step: int) -> bool:
        return False

    def interrupt_requested(self) -> bool:
        return bool(self.seen) and self.seen[-1] >= self.step


def test_train__an_interrupt_abandons_the_step_under_way_and_keeps_the_last_checkpoint(
        tmp_path):
    callbacks = InterruptAfter(4)
    result = train(TrainConfig(**TINY | {"log_every": 1, "checkpoint_every": 2}), tmp_path,
                   callbacks)
    assert result.stopped and result.steps == 4 and callbacks.seen == [1, 2, 3, 4]
    assert result.checkpoint == checkpoint.step_path(tmp_path / "checkpoints", 4)
    assert [r["step"] for r in _metrics(tmp_path)] == [1, 2, 3, 4]  # step 5 never finished
    assert not checkpoint.step_path(tmp_path / "checkpoints", 5).exists()


def test_train__an_interrupt_stops_a_backward_pass_midway():
    model = MECModel.from_config(TrainConfig(**TINY))
    asked = Callbacks()
    hooks = train_module._interruptible(model, asked)
    z = model.encoder(torch.rand(4, 3, 32, 32))  # forward: nothing asked yet
    asked.interrupt_requested = lambda: True
    with pytest.raises(train_module.Interrupted):
        z.sum().backward()
    for hook in hooks:
        hook.remove()
    model.encoder(torch.rand(4, 3, 32, 32))  # the hooks are gone


def test_train__a_stop_asked_at_the_last_step_is_a_finished_run(tmp_path):
    result = train(TrainConfig(**TINY), tmp_path, StopAt(6))
    assert result.steps == 6 and not result.stopped
