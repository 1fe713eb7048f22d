"""SimSiam's objective (Chen & He, CVPR 2021, Eq. 1-3): negative cosine similarity of the
prediction of one view and the stop-gradient projection of the other, symmetrized; the
"teacher" is the student's own encoder behind the stop-gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -mean cos(p, stopgrad(z)) for p, z (m x d)."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


def objective(s1, s2, t1, t2, hp) -> dict[str, torch.Tensor]:
    """L = D(p1, z2)/2 + D(p2, z1)/2 (Eq. 3)."""
    return {"loss": 0.5 * negative_cosine(s1, t2) + 0.5 * negative_cosine(s2, t1)}
