"""BYOL's objective (Grill et al., NeurIPS 2020, Eq. 2): the student's prediction of one
view regresses the EMA teacher's projection of the other, both l2-normalized, so the
squared distance is 2 - 2 cos; symmetrized over the two views (Eq. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z) for p, z (m x d)."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.float(), dim=1)).mean()


def objective(s1, s2, t1, t2, hp) -> dict[str, torch.Tensor]:
    """s1, s2: predictions of the student; t1, t2: the teacher's projections (no gradient)."""
    return {"loss": normalized_mse(s1, t2.detach()) + normalized_mse(s2, t1.detach())}
