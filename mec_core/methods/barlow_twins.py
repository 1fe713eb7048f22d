"""Barlow Twins' objective (Zbontar et al., ICML 2021, Eq. 1-2): the cross-correlation
matrix of the two views' batch-standardized embeddings is pushed to the identity."""

from __future__ import annotations

import torch

from mec_core.methods.pairs import check_pair

LAMBDA = 5e-3  # weight of the redundancy-reduction (off-diagonal) term, the paper's


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """C_ij = sum_b z1n_bi z2n_bj / m for z1, z2 (m x d) standardized along the batch (Eq. 2)."""
    m = z1.shape[0]
    a, b = z1.float(), z2.float()
    a = (a - a.mean(0)) / a.std(0, unbiased=False).clamp_min(1e-6)
    b = (b - b.mean(0)) / b.std(0, unbiased=False).clamp_min(1e-6)
    return a.T @ b / m  # (d, m) @ (m, d) -> (d, d)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = LAMBDA) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2 (Eq. 1)."""
    check_pair(z1, z2)
    c = cross_correlation(z1, z2)
    diag = torch.diagonal(c)
    off = c.square().sum() - diag.square().sum()
    return (1 - diag).square().sum() + lambd * off


def objective(s1, s2, t1, t2, hp) -> dict[str, torch.Tensor]:
    """Gradients flow through both views; there is no teacher."""
    return {"loss": barlow_twins_loss(s1, s2)}
