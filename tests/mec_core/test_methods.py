"""Each baseline objective against its paper's formula written the straightforward way
(loops and explicit sums, float64), plus the contract every method keeps."""

import math

import pytest
import torch
import torch.nn.functional as F

from mec_core.config import TrainConfig
from mec_core.methods import METHODS, Hyper, get_method
from mec_core.methods.barlow_twins import LAMBDA, barlow_twins_loss
from mec_core.methods.byol import normalized_mse
from mec_core.methods.simclr import nt_xent
from mec_core.methods.simsiam import negative_cosine
from mec_core.methods.vicreg import COVARIANCE, EPS, GAMMA, INVARIANCE, VARIANCE, vicreg_loss
from mec_core.models import MECModel


def pair(m=16, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(m, d, generator=g, dtype=torch.float64)
    return z1, z1 + 0.5 * torch.randn(m, d, generator=g, dtype=torch.float64)


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_nt_xent__matches_eq1_of_simclr():
    z1, z2 = pair()
    tau, m = 0.5, len(z1)
    z = torch.cat([z1, z2])
    total = 0.0
    for i in range(2 * m):  # l(i, j) = -log exp(sim(i,j)/tau) / sum_{k != i} exp(sim(i,k)/tau)
        j = (i + m) % (2 * m)
        denominator = sum(math.exp(cos(z[i], z[k]) / tau) for k in range(2 * m) if k != i)
        total += -math.log(math.exp(cos(z[i], z[j]) / tau) / denominator)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(total / (2 * m), rel=1e-5)


def test_normalized_mse__is_byols_eq2():
    p, z = pair()
    ref = sum(float(((p[i] / p[i].norm() - z[i] / z[i].norm()) ** 2).sum())
              for i in range(len(p))) / len(p)
    assert normalized_mse(p, z).item() == pytest.approx(ref, rel=1e-6)


def test_negative_cosine__is_simsiams_d_with_stop_gradient():
    p, z = pair()
    p.requires_grad_()
    z.requires_grad_()
    ref = -sum(cos(p[i].detach(), z[i].detach()) for i in range(len(p))) / len(p)
    loss = negative_cosine(p, z)
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    loss.backward()
    assert z.grad is None and p.grad.abs().sum() > 0


def test_barlow_twins__matches_eq1_and_eq2():
    z1, z2 = pair(m=32, d=6)
    m, d = z1.shape
    a = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    b = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    ref = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(float(a[k, i] * b[k, j]) for k in range(m)) / m
            ref += (1 - c) ** 2 if i == j else LAMBDA * c ** 2
    assert barlow_twins_loss(z1, z2).item() == pytest.approx(ref, rel=1e-6)


def test_vicreg__matches_eqs_1_to_6():
    z1, z2 = pair(m=32, d=6)
    m, d = z1.shape

    def v(z):
        return sum(max(0.0, GAMMA - math.sqrt(float(z[:, j].var()) + EPS))
                   for j in range(d)) / d

    def c(z):
        zc = z - z.mean(0)
        return sum(float((zc[:, i] * zc[:, j]).sum() / (m - 1)) ** 2
                   for i in range(d) for j in range(d) if i != j) / d

    invariance = float(((z1 - z2) ** 2).sum()) / (m * d)  # the official code's F.mse_loss
    ref = INVARIANCE * invariance + VARIANCE * (v(z1) + v(z2)) + COVARIANCE * (c(z1) + c(z2))
    assert vicreg_loss(z1, z2).item() == pytest.approx(ref, rel=1e-6)


def test_objectives__reject_mismatched_shapes():
    a, b = torch.randn(4, 8), torch.randn(4, 9)
    for fn in (nt_xent, barlow_twins_loss, vicreg_loss):
        with pytest.raises(ValueError, match=r"\(4, 8\) and \(4, 9\)"):
            fn(a, b)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nt_xent(a, a, 0.0)
    with pytest.raises(ValueError, match="unknown method 'moco'"):
        get_method("moco")


def test_objectives__collapse_is_not_a_minimum_for_contrastive_and_redundancy_methods():
    """Identical constant embeddings must score worse than spread-out aligned ones."""
    spread = torch.linalg.qr(torch.randn(16, 16)).Q[:, :8] * 4
    collapsed = torch.ones(16, 8) + 1e-3 * torch.randn(16, 8)
    for fn in (nt_xent, barlow_twins_loss, vicreg_loss):
        assert fn(spread, spread) < fn(collapsed, collapsed)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(METHODS))
def test_method__trains_its_network_end_to_end(name, precision):
    """Contract for every method, under the trainer's autocast in both precisions: a finite
    float32 loss, and every trainable parameter of the student gets a float32 gradient;
    targets come only where the method says."""
    config = TrainConfig(method=name, dataset="synthetic", backbone="convnet", proj_dim=32,
                         proj_hidden_dim=64, pred_hidden_dim=16)
    model = MECModel.from_config(config)
    method = get_method(name)
    shared = method.teacher == "ema" and config.teacher_momentum == 0  # Table 5d
    assert model.targets == ("stop_grad" if shared else method.teacher)
    assert (model.teacher is not None) == (model.targets == "ema")
    assert isinstance(model.predictor, torch.nn.Identity) != method.predictor
    x1, x2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    # as the trainer does: the network under autocast, the objective outside it
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        views = model(x1, x2)
    assert views[0].dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    out = method.objective(*views, Hyper(lam=0.5, order=4))
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    out["loss"].backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, pname
            assert p.grad.dtype == torch.float32, pname


def test_method__simsiam_and_momentum_zero_use_the_students_own_projections():
    for config in (TrainConfig(method="simsiam", dataset="synthetic", backbone="convnet"),
                   TrainConfig(dataset="synthetic", backbone="convnet", teacher_momentum=0.0)):
        model = MECModel.from_config(config)
        assert model.teacher is None and model.targets == "stop_grad"
        model.train()
        x1, x2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
        s1, s2, t1, t2 = model(x1, x2)
        assert not t1.requires_grad and not t2.requires_grad
        assert torch.allclose(F.normalize(t1), F.normalize(model.encoder(x1)), atol=1e-5)


@pytest.mark.parametrize("name", list(METHODS))
def test_method__objective_of_bf16_embeddings_is_computed_in_float32(name):
    """The trainer hands the objectives the network's bf16 embeddings (autocast): each
    computes in float32, giving what it gives for the same values in float32."""
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(16, 32, generator=g).bfloat16() for _ in range(4)]
    hp = Hyper(lam=0.5, order=4)
    low = get_method(name).objective(*views, hp)["loss"]
    high = get_method(name).objective(*(v.float() for v in views), hp)["loss"]
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(high.item(), rel=1e-6, abs=1e-7)


def _encoder_gradient(config: TrainConfig, x1: torch.Tensor, x2: torch.Tensor):
    """The MEC loss's gradient on the student encoder, and the two targets (retained)."""
    torch.manual_seed(0)
    model = MECModel.from_config(config)
    s1, s2, t1, t2 = model(x1, x2)
    for t in (t1, t2):
        if t.requires_grad:
            t.retain_grad()
    get_method("mec").objective(s1, s2, t1, t2, Hyper(lam=0.5, order=None))["loss"].backward()
    grad = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
    return grad, t1, t2


@pytest.mark.parametrize("predictor", [True, False])
def test_method__mec_teacher_none_sends_the_gradient_through_both_branches(predictor):
    """teacher none: the targets are the other view's projections with their gradient, so
    the encoder gets the target branch's share as well; the shared teacher (stop_grad, the
    small recipe) and the EMA teacher stop it at the targets."""
    small = dict(dataset="synthetic", backbone="convnet", proj_dim=32, proj_hidden_dim=64,
                 pred_hidden_dim=16, predictor=predictor)
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(8, 3, 32, 32, generator=g), torch.randn(8, 3, 32, 32, generator=g)
    both, t1, t2 = _encoder_gradient(TrainConfig(**small, teacher="none"), x1, x2)
    assert t1.grad.abs().sum() > 0 and t2.grad.abs().sum() > 0
    stopped, s1, s2 = _encoder_gradient(TrainConfig(**small), x1, x2)  # stop_grad
    assert not s1.requires_grad and not s2.requires_grad
    # the same network and views: the student branch's share alone differs from both
    assert not torch.allclose(both, stopped)
    ema = MECModel.from_config(TrainConfig(**small, teacher="ema", teacher_momentum=0.99))
    _, _, e1, e2 = ema(x1, x2)
    assert ema.teacher is not None and not e1.requires_grad and not e2.requires_grad
    assert all(not p.requires_grad for p in ema.teacher.parameters())
    if not predictor:  # symmetric and no stop-gradient: both branches are the one encoder
        torch.testing.assert_close(both, 2 * stopped, atol=1e-6, rtol=1e-4)
