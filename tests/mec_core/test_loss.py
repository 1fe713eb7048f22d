"""The MEC objective against the paper's equations."""

import math
import time

import pytest
import torch
import torch.nn.functional as F

from mec_core.loss import (
    RADIUS,
    coding_length,
    correlation,
    mec_lambda,
    mec_loss,
    mec_mu,
    spectral_norm,
)


def eq3_reference(z1, z2, lam, order):
    """Eq. 3 written the straightforward way: the trace of a sum of explicit matrix powers."""
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    c = lam * a @ b.T
    power, total = c, torch.zeros_like(c)
    for k in range(1, order + 1):
        if k > 1:
            power = power @ c
        total = total + (-1) ** (k + 1) / k * power
    return torch.trace(total)


def eq1_reference(z1, z2, lam):
    """Eq. 1 by eigenvalues: log det(I + C) = sum log(1 + eig(C))."""
    a, b = F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)
    eig = torch.linalg.eigvals(lam * a @ b.T)
    return torch.log(1 + eig).real.sum()


def views(m, d, anisotropy=0.5, rho=0.8, seed=0):
    """Two correlated views whose per-dimension variance decays like k^-anisotropy,
    the shape of a trained projector's spectrum."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, d + 1).float() ** (-anisotropy / 2)
    z = torch.randn(m, d, generator=g) * scale
    return z, rho * z + math.sqrt(1 - rho**2) * torch.randn(m, d, generator=g) * scale


SIZES = [(64, 512), (256, 2048), (512, 128), (300, 300)]


@pytest.mark.parametrize("m,d", SIZES)
@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 8])
def test_coding_length__taylor_equals_eq3_sum_of_powers(m, d, order):
    z1, z2 = views(m, d)
    lam = mec_lambda(m, d, 64.0)
    ours = coding_length(z1, z2, lam, order=order)
    ref = eq3_reference(z1, z2, lam, order)
    assert abs(ours - ref) / abs(ref) < 1e-5


@pytest.mark.parametrize("m,d", SIZES)
def test_coding_length__exact_equals_eigenvalue_form(m, d):
    z1, z2 = views(m, d)
    lam = mec_lambda(m, d, 64.0)
    exact = coding_length(z1.double(), z2.double(), lam)
    assert torch.allclose(exact, eq1_reference(z1, z2, lam), rtol=1e-9)


@pytest.mark.parametrize("m,d", SIZES)
@pytest.mark.parametrize("order", [None, 4])
def test_coding_length__batch_form_equals_feature_form(m, d, order):
    z1, z2 = views(m, d, seed=1)
    lam = mec_lambda(m, d, 64.0)
    batch = coding_length(z1.double(), z2.double(), lam, order, form="batch")
    feature = coding_length(z1.double(), z2.double(), lam, order, form="feature")
    assert torch.allclose(batch, feature, rtol=1e-10)


def test_coding_length__auto_picks_the_smaller_matrix():
    z = torch.randn(8, 32)
    assert correlation(z, z, 1.0).shape == (8, 8)
    assert correlation(z.T.contiguous(), z.T.contiguous(), 1.0).shape == (8, 8)
    assert correlation(z, z, 1.0, form="feature").shape == (32, 32)


def test_coding_length__taylor_converges_to_exact_as_order_grows():
    z1, z2 = views(256, 512, anisotropy=1.0)
    lam = mec_lambda(256, 512, 128.0)
    assert 0.3 < spectral_norm(correlation(z1, z2, lam)) < 1.0
    exact = coding_length(z1.double(), z2.double(), lam)
    errors = [abs(coding_length(z1.double(), z2.double(), lam, order=n) - exact).item()
              for n in (1, 2, 4, 8, 16)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    assert errors[-1] / exact.item() < 1e-4


@pytest.mark.parametrize("m,d", [(256, 2048), (1024, 2048), (512, 512), (4096, 512)])
def test_coding_length__order4_within_half_percent_at_default_eps(m, d):
    """The paper's Figure 3 claim, on realistic (spectrum-shaped) and nearly orthogonal
    embeddings."""
    lam = mec_lambda(m, d, 64.0)
    z1, z2 = views(m, d)
    cases = [(z1, z2)]
    if m <= d:  # orthonormal rows, second view slightly perturbed
        q = torch.linalg.qr(torch.randn(d, m)).Q.T
        cases.append((q, q + 0.05 * torch.randn(m, d) / math.sqrt(d)))
    for a, b in cases:
        exact = coding_length(a.double(), b.double(), lam)
        taylor = coding_length(a, b, lam, order=4)
        assert abs(taylor - exact) / exact < 5e-3


def test_mec_loss__keeps_the_series_inside_its_radius():
    """Nearly collapsed rows put ||C||_2 near d / eps^2 > 1, where the series diverges:
    mec_loss lowers lambda for that step so that the series sees ||C||_2 = RADIUS."""
    m, d = 256, 2048
    lam = mec_lambda(m, d, 64.0)
    z = torch.randn(1, d) + 0.01 * torch.randn(m, d)
    c = correlation(z, z, lam)
    norm = spectral_norm(c).item()
    assert norm == pytest.approx(torch.linalg.matrix_norm(c, 2).item(), rel=1e-3)
    assert norm > 1.0
    out = mec_loss(z, z, z, z, lam, order=4)
    assert out["spectral_norm"].item() == pytest.approx(norm, rel=1e-5)
    scale = out["lambda_scale"].item()
    assert scale == pytest.approx(RADIUS / norm, rel=1e-5)
    series = coding_length(z, z, lam * scale, order=4).item()
    assert out["coding_length"].item() == pytest.approx(mec_mu(m, d) * series / m, rel=1e-4)
    assert out["loss"].item() == pytest.approx(-series / (lam * scale * m), rel=1e-4)
    # inside the radius the series is a coding length: within its truncation error of
    # log(1 + x) at x = RADIUS (10 %), where outside it is off by orders of magnitude
    exact = coding_length(z.double(), z.double(), lam * scale).item()
    assert series == pytest.approx(exact, rel=0.12)
    # the reference code's behaviour on request: lambda kept, the series far off
    kept = mec_loss(z, z, z, z, lam, order=4, radius=None)
    assert kept["lambda_scale"].item() == 1.0
    assert abs(kept["coding_length"].item() - out["coding_length"].item()) > 1.0
    # the exact log-det never needs it
    assert mec_loss(z, z, z, z, lam, order=None)["lambda_scale"].item() == 1.0


@pytest.mark.parametrize("form", ["batch", "feature"])
@pytest.mark.parametrize("order", [None, 1, 2, 3, 4, 5])
def test_coding_length__float64_gradcheck(form, order):
    z1 = torch.randn(12, 7, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(12, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: coding_length(a, b, 0.2, order, form), (z1, z2))


def test_coding_length__gradient_matches_eq3_autograd():
    z1, z2 = views(128, 256)
    lam = mec_lambda(128, 256, 64.0)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    coding_length(a1, a2, lam, order=4).backward()
    eq3_reference(b1, b2, lam, 4).backward()
    assert torch.allclose(a1.grad, b1.grad, rtol=1e-4, atol=1e-7)
    assert torch.allclose(a2.grad, b2.grad, rtol=1e-4, atol=1e-7)


def test_coding_length__symmetric_in_the_two_views():
    z1, z2 = views(64, 256)
    assert torch.allclose(coding_length(z1, z2, 0.3, 4), coding_length(z2, z1, 0.3, 4))
    assert torch.allclose(coding_length(z1, z2, 0.3), coding_length(z2, z1, 0.3))


def test_coding_length__scale_of_rows_does_not_matter():
    z1, z2 = views(64, 256)
    scaled = z1 * torch.rand(64, 1) * 10
    assert torch.allclose(coding_length(z1, z2, 0.3, 4), coding_length(scaled, z2, 0.3, 4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_coding_length__runs_in_float32_under_autocast(dtype):
    z1, z2 = views(64, 256)
    with torch.autocast("cpu", dtype=dtype):
        low = coding_length(z1.to(dtype), z2.to(dtype), 0.3, 4)
    assert low.dtype == torch.float32
    ref = coding_length(z1.to(dtype).float(), z2.to(dtype).float(), 0.3, 4)
    assert torch.allclose(low, ref)


def test_coding_length__rejects_bad_arguments():
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match="order must be >= 1, got 0"):
        coding_length(z, z, 1.0, order=0)
    with pytest.raises(ValueError, match=r"\(4, 8\) and \(4, 9\)"):
        coding_length(z, torch.randn(4, 9), 1.0)
    with pytest.raises(ValueError, match="form must be"):
        coding_length(z, z, 1.0, form="rows")
    with pytest.raises(ValueError, match="eps_sq must be > 0"):
        mec_lambda(4, 8, 0.0)


def test_mec_lambda_and_mu__follow_eq1():
    assert mec_mu(1024, 2048) == 1536
    # lambda = d / (m eps^2) = 1 / (m eps_d^2) with eps_d^2 = eps^2 / d
    assert mec_lambda(1024, 2048, 64.0) == pytest.approx(1 / (1024 * 64.0 / 2048))


def test_mec_loss__symmetric_teacher_targets_and_scaling():
    m, d = 32, 64
    s1, s2, t1, t2 = (torch.randn(m, d, requires_grad=True) for _ in range(4))
    lam = mec_lambda(m, d, 64.0)
    out = mec_loss(s1, s2, t1, t2, lam, order=4)
    length = 0.5 * (coding_length(s1, t2, lam, 4) + coding_length(s2, t1, lam, 4))
    assert torch.allclose(out["loss"], -length / (lam * m))
    assert torch.allclose(out["coding_length"], mec_mu(m, d) * length / m)
    out["loss"].backward()
    # the loss differentiates the targets as given: the network decides whether they
    # carry a gradient (teacher none) or not (an EMA teacher's, or detached ones)
    assert all(z.grad.abs().sum() > 0 for z in (s1, s2, t1, t2))
    s1.grad = None
    mec_loss(s1, s2, t1.detach(), t2.detach(), lam, order=4)["loss"].backward()
    assert s1.grad.abs().sum() > 0
    # swapping the two views leaves the loss unchanged
    swapped = mec_loss(s2, s1, t2, t1, lam, order=4)["loss"]
    assert torch.allclose(out["loss"], swapped)


def _timed(fn, repeats=3):
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("m,d", [(256, 1024), (1024, 256), (512, 512)])
def test_coding_length__not_slower_than_eq3_forward_backward(m, d):
    z1, z2 = views(m, d)
    lam = mec_lambda(m, d, 64.0)

    def run(f):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        f(a, b).backward()

    # best of 7, alternating, so that a burst of load on the machine hits both alike
    ours, ref = float("inf"), float("inf")
    for _ in range(7):
        ours = min(ours, _timed(lambda: run(lambda a, b: coding_length(a, b, lam, order=4)), 1))
        ref = min(ref, _timed(lambda: run(lambda a, b: eq3_reference(a, b, lam, 4)), 1))
    assert ours <= 1.1 * ref, f"coding_length {ours * 1e3:.1f} ms vs Eq. 3 {ref * 1e3:.1f} ms"
