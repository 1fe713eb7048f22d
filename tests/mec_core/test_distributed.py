"""Global-batch BatchNorm in a real (gloo) process group: dtypes under autocast."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mec_core.distributed import GlobalBatchNorm


@pytest.fixture
def gloo_world(tmp_path):
    """This process as a gloo world of one: GlobalBatchNorm takes its reducing path."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_global_batchnorm__statistics_in_float32_output_in_the_inputs_dtype(gloo_world, dtype):
    g = torch.Generator().manual_seed(0)
    x = (3 + 2 * torch.randn(8, 4, 5, 5, generator=g)).to(dtype)
    bn = GlobalBatchNorm(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=g)
        bn.bias.uniform_(-1, 1, generator=g)
    ref = torch.nn.BatchNorm2d(4)
    ref.load_state_dict(bn.state_dict())
    expected = ref(x.float())  # BatchNorm of the same values, all in float32
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = bn(x)
    assert y.dtype == dtype
    assert bn.running_mean.dtype == bn.running_var.dtype == torch.float32
    # running statistics from float32 sums of the (rounded) inputs: float32's exactness
    assert torch.allclose(bn.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(bn.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    assert bn.num_batches_tracked.item() == 1
    # the output is only rounded to its dtype at the end
    tolerance = 1e-5 if dtype == torch.float32 else 2.0 ** -8
    assert torch.allclose(y.float(), expected, rtol=tolerance, atol=tolerance)
    F.mse_loss(y.float(), torch.zeros_like(expected)).backward()
    assert bn.weight.grad.dtype == torch.float32 and torch.isfinite(bn.weight.grad).all()
