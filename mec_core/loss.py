"""Maximum Entropy Coding objective (Liu et al., NeurIPS 2022, Eqs. 1-4).

Notation of the paper: a batch of m samples, embeddings of dimension d, distortion eps
(eps_d^2 = eps^2 / d), mu = (m + d) / 2 and lambda = d / (m eps^2) = 1 / (m eps_d^2).
Embedding matrices are m x d here (one row per sample), so the paper's Z^T Z (m x m) is
our Z1 Z2^T.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from mec_core.config import TAYLOR_RADIUS as RADIUS

Form = Literal["auto", "batch", "feature"]


def mec_mu(m: int, d: int) -> float:
    """mu = (m + d) / 2, the scale of the coding length in Eq. 1."""
    return (m + d) / 2


def mec_lambda(m: int, d: int, eps_sq: float) -> float:
    """lambda = d / (m eps^2) = 1 / (m eps_d^2) of Eq. 1."""
    if eps_sq <= 0:
        raise ValueError(f"eps_sq must be > 0, got {eps_sq}")
    return d / (m * eps_sq)


def correlation(z1: torch.Tensor, z2: torch.Tensor, lam: float, form: Form = "auto"):
    """C = lam * Z1hat Z2hat^T (batch form, m x m) or lam * Z2hat^T Z1hat (feature form, d x d).

    Rows of z1, z2 (m x d) are l2-normalized first. Both forms have the same nonzero
    eigenvalues (Eq. 4), hence the same traces of powers and the same log det(I + C).
    The product runs in float32 even under autocast: the series is a sum of nearly
    cancelling terms and bf16 would lose them.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be m x d, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    if form not in ("auto", "batch", "feature"):
        raise ValueError(f"form must be 'auto', 'batch' or 'feature', got {form!r}")
    m, d = z1.shape
    if form == "auto":
        form = "batch" if m <= d else "feature"
    with torch.autocast(z1.device.type, enabled=False):
        dtype = torch.promote_types(z1.dtype, torch.float32)
        a = F.normalize(z1.to(dtype), dim=1)
        b = F.normalize(z2.to(dtype), dim=1)
        if form == "batch":
            return lam * (a @ b.T)  # (m, d) @ (d, m) -> (m, m)
        return lam * (b.T @ a)  # (d, m) @ (m, d) -> (d, d)


class _TaylorLogDet(torch.autograd.Function):
    """sum_{k=1..n} (-1)^{k+1}/k tr(C^k) (Eq. 2/3), from traces of powers only.

    Works with the transposed powers T_k = (C^k)^T, kept contiguous: tr(C^i C^j) =
    <C^i, T_j>, a dot product with no temporary, for i + j = k, so forward forms powers up
    to ceil(n/2) (for n = 4 one product beyond C). Backward uses d tr(C^k)/dC =
    k (C^{k-1})^T: dL/dC = I - T_1 + T_2 - ... +- T_{n-1}, summed in place into the one
    new power it needs (for n = 4, T_3 = T_1 T_2).
    """

    @staticmethod
    def forward(ctx, c: torch.Tensor, order: int) -> torch.Tensor:
        t = [c.T.contiguous()]  # t[k - 1] = (C^k)^T
        for _ in range(1, (order + 1) // 2):
            t.append(t[-1] @ t[0])
        total = torch.diagonal(c).sum()
        for k in range(2, order + 1):
            i, j = k // 2, k - k // 2
            left = c if i == 1 else t[i - 1].T.contiguous()  # C^i
            total = total + ((-1) ** (k + 1) / k) * torch.dot(left.view(-1), t[j - 1].view(-1))
        ctx.order = order
        ctx.save_for_backward(*t)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        n = ctx.order
        t = list(ctx.saved_tensors)
        if n == 1:
            return grad_out * torch.eye(t[0].shape[0], dtype=t[0].dtype, device=t[0].device), None
        while len(t) < n - 1:
            t.append(t[-1] @ t[0])
        # h = s * sum_{p=1..n-1} (-1)^p T_p with s = (-1)^(n-1), so that T_{n-1} enters with +1
        s = (-1) ** (n - 1)
        h = t[n - 2] if len(ctx.saved_tensors) < n - 1 else t[n - 2].clone()
        for p in range(1, n - 1):
            h.add_(t[p - 1], alpha=(-1) ** p * s)
        h.mul_(s * grad_out)  # grad_out * (sum_p (-1)^p T_p)
        h.diagonal().add_(grad_out)  # + grad_out * I
        return h, None


def log_det_taylor(c: torch.Tensor, order: int) -> torch.Tensor:
    """Order-n Taylor series of log det(I + C) for a square C (Eq. 2); needs ||C||_2 < 1."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"C must be square, got {tuple(c.shape)}")
    with torch.autocast(c.device.type, enabled=False):  # powers of C stay in float32
        return _TaylorLogDet.apply(c, order)


def log_det_exact(c: torch.Tensor) -> torch.Tensor:
    """log |det(I + C)| by LU (slogdet), Eq. 1."""
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    with torch.autocast(c.device.type, enabled=False):
        return torch.linalg.slogdet(eye + c).logabsdet


def coding_length(z1: torch.Tensor, z2: torch.Tensor, lam: float, order: int | None = None,
                  form: Form = "auto") -> torch.Tensor:
    """log det(I + lam Z1hat Z2hat^T) for m x d embeddings z1, z2 (Eq. 1/3 without mu).

    Rows are l2-normalized inside. `order=None` is exact (slogdet); `order=n` the Taylor
    series of order n (Eq. 3). `form` picks the m x m ("batch") or d x d ("feature")
    matrix; "auto" takes the smaller (Eq. 4). Differentiable in z1 and z2.
    """
    c = correlation(z1, z2, lam, form)
    return log_det_exact(c) if order is None else log_det_taylor(c, order)


@torch.no_grad()
def spectral_norm(c: torch.Tensor, iters: int = 16) -> torch.Tensor:
    """Estimate ||C||_2 (largest singular value) by power iteration on C^T C.

    The Taylor series of Eq. 2 converges only while ||C||_2 < 1. Power iteration from a
    fixed start vector never overestimates; `iters` steps cost O(iters n^2).
    """
    v = torch.ones(c.shape[1], dtype=c.dtype, device=c.device) / c.shape[1] ** 0.5
    for _ in range(iters):
        w = c.T @ (c @ v)
        v = w / w.norm().clamp_min(1e-30)
    return (c @ v).norm()


def mec_loss(s1: torch.Tensor, s2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor,
             lam: float, order: int | None, radius: float | None = RADIUS
             ) -> dict[str, torch.Tensor]:
    """The symmetric MEC loss of Eq. 3 with the teacher's outputs as targets.

    s1, s2: student outputs (predictor, or projector in the symmetric ablation) for views
    1 and 2; t1, t2: teacher projector outputs; all m x d over the *global* batch (gather
    across processes before calling). `lam` is the current, warmed-up lambda. The
    targets are differentiated as given: the network decides whether they carry a
    gradient (an EMA teacher's or detached ones do not; `teacher: none`'s do).

    As in the reference code the loss is -(1/lambda) / m times the mean of the two coding
    lengths, so its first-order term is minus the mean cosine similarity of the views
    whatever lambda is. The Taylor series of Eq. 2 converges only while ||C||_2 < 1:
    with an `order`, a C whose norm would pass `radius` is scaled down to it (lambda
    lowered for that step and that direction), so the objective stays a coding length
    instead of a diverging polynomial; `radius=None` keeps lambda (the reference code).
    Returns the loss and, detached, the per-sample coding length mu L / m (at the lambda
    used), the larger of the two spectral norms ||C||_2 before any scaling, and the
    smaller of the two lambda scales (1: no scaling).
    """
    m, d = s1.shape
    lengths, norms, scales = [], [], []
    for s, t in ((s1, t2), (s2, t1)):
        c = correlation(s, t, lam)
        norm = spectral_norm(c.detach())
        scale = torch.ones_like(norm)
        if order is not None and radius is not None:
            scale = (radius / norm).clamp(max=1.0)
            c = c * scale
        log_det = log_det_exact(c) if order is None else log_det_taylor(c, order)
        lengths.append(log_det)
        norms.append(norm)
        scales.append(scale)
    # dividing by the lambda each direction used keeps the first-order term at minus the
    # mean cosine similarity
    loss = -0.5 * (lengths[0] / scales[0] + lengths[1] / scales[1]) / (lam * m)
    return {
        "loss": loss,
        "coding_length": mec_mu(m, d) * 0.5 * (lengths[0] + lengths[1]).detach() / m,
        "spectral_norm": torch.maximum(*norms),
        "lambda_scale": torch.minimum(*scales),
    }
