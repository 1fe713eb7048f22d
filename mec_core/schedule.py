"""Schedules of the reference recipe: pure functions of the step (0-based) and the run length."""

from __future__ import annotations

import math


def _cosine(start: float, end: float, progress: float) -> float:
    """Half-cosine from `start` (progress 0) to `end` (progress 1)."""
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to 0."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    return _cosine(peak, 0.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1))


def teacher_momentum(step: int, total_steps: int, base: float) -> float:
    """EMA momentum of the teacher: cosine from `base` (0.996 in the paper) to 1.

    base = 0 means weight sharing (Table 5 ablation) and stays 0.
    """
    if base == 0.0:
        return 0.0
    return _cosine(base, 1.0, step / max(total_steps, 1))


def lambda_inv(step: int, warmup_steps: int, lam: float, factor: float) -> float:
    """1/lambda, warmed up linearly from factor/lambda to 1/lambda, then constant.

    A large 1/lambda (small lambda) keeps ||C||_2 well below 1 early in training, where the
    embeddings are nearly collapsed and the Taylor series of Eq. 2 would diverge.
    """
    if step >= warmup_steps:
        return 1.0 / lam
    return (factor + (1.0 - factor) * step / warmup_steps) / lam
