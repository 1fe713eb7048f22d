"""The library on a CUDA GPU (marked `cuda`: skipped without one; bench/gpu_check.sh runs
them): the loss against a float64 reference, training in bf16 and fp16 with checkpoints
and resume, the trainer's features against the CPU's."""

import json

import pytest
import torch

from mec_core import checkpoint
from mec_core.config import TrainConfig
from mec_core.data import synthetic
from mec_core.evaluate import features, from_checkpoint
from mec_core.loss import coding_length, mec_lambda
from mec_core.train import Callbacks, train

pytestmark = pytest.mark.cuda

TINY = dict(dataset="synthetic", backbone="convnet", batch_size=32, epochs=1, max_steps=6,
            proj_dim=64, pred_hidden_dim=32, train_limit=256, log_every=1,
            checkpoint_every=3, warmup_epochs=0.1, lambda_warmup_epochs=0.2, device="cuda",
            monitor_every=3)


@pytest.mark.parametrize("form", ["batch", "feature"])
@pytest.mark.parametrize("order", [None, 4])
def test_cuda__coding_length_equals_the_float64_reference(form, order):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(256, 128, generator=g)
    z2 = 0.8 * z1 + 0.6 * torch.randn(256, 128, generator=g)  # two views of one batch
    lam = mec_lambda(256, 128, 64.0)
    expected = coding_length(z1.double(), z2.double(), lam, order, form)
    for dtype in (torch.float32, torch.bfloat16):  # bf16 embeddings: float32 inside
        got = coding_length(z1.cuda().to(dtype), z2.cuda().to(dtype), lam, order, form)
        assert got.dtype == torch.float32 and got.device.type == "cuda"
        assert got.item() == pytest.approx(expected.item(), rel=1e-4 if dtype == torch.float32
                                           else 2e-2)


class StopAt(Callbacks):
    def __init__(self, step: int) -> None:
        self.step = step

    def should_stop(self, step: int) -> bool:
        return step >= self.step


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_cuda__training_writes_finite_metrics_and_resumes(tmp_path, precision):
    """A run stopped at step 3 resumes from its checkpoint (loaded onto the GPU, the CPU
    generator's state included) and finishes with every step's metrics once."""
    config = TrainConfig(**(TINY | {"precision": precision}))
    assert train(config, tmp_path, StopAt(3)).steps == 3
    result = train(config, tmp_path)
    assert result.steps == 6
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(v == v for r in rows for v in r.values())  # no NaN
    state = checkpoint.load(result.checkpoint)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


def test_cuda__features_equal_the_cpus(tmp_path):
    config = TrainConfig(**(TINY | {"precision": "bf16", "max_steps": 2}))
    source = from_checkpoint(str(train(config, tmp_path).checkpoint))
    images = synthetic("test", n=64).images
    on_cpu = features(source, images, "cpu")
    on_gpu = features(source, images, "cuda")
    assert on_gpu.dtype == torch.float32 and on_gpu.device.type == "cpu"
    assert torch.allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-4)
