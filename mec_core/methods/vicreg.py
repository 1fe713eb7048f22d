"""VICReg's objective (Bardes et al., ICLR 2022, Eq. 1-6): invariance (mean squared
distance of the views), variance (a hinge on each dimension's standard deviation) and
covariance (squared off-diagonal covariances), each regularizer on both views."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mec_core.methods.pairs import check_pair

INVARIANCE, VARIANCE, COVARIANCE = 25.0, 25.0, 1.0  # lambda, mu, nu of the paper
GAMMA, EPS = 1.0, 1e-4  # target standard deviation and its numerical epsilon


def variance(z: torch.Tensor) -> torch.Tensor:
    """v(Z) = mean_j max(0, gamma - sqrt(Var(z_j) + eps)) for z (m x d) (Eq. 1)."""
    std = torch.sqrt(z.var(dim=0) + EPS)
    return F.relu(GAMMA - std).mean()


def covariance(z: torch.Tensor) -> torch.Tensor:
    """c(Z) = sum_{i != j} C(Z)_ij^2 / d with C the (d x d) covariance (Eq. 3-4)."""
    m, d = z.shape
    centred = z - z.mean(0)
    cov = centred.T @ centred / (m - 1)  # (d, m) @ (m, d) -> (d, d)
    return (cov.square().sum() - torch.diagonal(cov).square().sum()) / d


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')] (Eq. 6)."""
    check_pair(z1, z2)
    a, b = z1.float(), z2.float()
    return (INVARIANCE * F.mse_loss(a, b) + VARIANCE * (variance(a) + variance(b))
            + COVARIANCE * (covariance(a) + covariance(b)))


def objective(s1, s2, t1, t2, hp) -> dict[str, torch.Tensor]:
    """Gradients flow through both views; there is no teacher."""
    return {"loss": vicreg_loss(s1, s2)}
