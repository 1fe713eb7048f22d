"""MEC's objective (Liu et al., NeurIPS 2022, Eq. 3), the platform's default method; the
math is in `mec_core.loss`."""

from __future__ import annotations

import torch

from mec_core.loss import mec_loss


def objective(s1, s2, t1, t2, hp) -> dict[str, torch.Tensor]:
    """The symmetric coding length of the student against the teacher's targets, with the
    step's warmed-up lambda, the configured Taylor order (None: exact) and radius."""
    return mec_loss(s1, s2, t1, t2, hp.lam, hp.order, hp.radius)
