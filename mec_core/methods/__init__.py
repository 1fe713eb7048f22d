"""Self-supervised objectives that share one backbone, augmentation, trainer and evaluation.

A method is its objective plus two facts about the network: whether the student has a
predictor, and where the targets come from. `config.method` names one of `METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from mec_core.config import TAYLOR_RADIUS, TEACHERS
from mec_core.methods import barlow_twins, byol, mec, simclr, simsiam, vicreg

Teacher = Literal["ema", "stop_grad", "none"]


@dataclass(frozen=True)
class Hyper:
    """Per-step values an objective may need: MEC's warmed-up lambda, Taylor order and
    the series' radius."""

    lam: float
    order: int | None
    radius: float | None = TAYLOR_RADIUS


@dataclass(frozen=True)
class Method:
    """`objective(s1, s2, t1, t2, hp)` returns a dict with at least "loss"; `teacher` is
    where its targets come from by default (`mec_core.config.TEACHERS`)."""

    name: str
    predictor: bool
    objective: Callable[..., dict[str, torch.Tensor]]

    @property
    def teacher(self) -> Teacher:
        """"ema" (a moving average of the student; momentum 0 turns it into "stop_grad"),
        "stop_grad" (the student's own projections, detached) or "none" (the objective
        compares the two views' projections with gradients through both)."""
        return TEACHERS[self.name][0]


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("mec", True, mec.objective),
    Method("byol", True, byol.objective),
    Method("simsiam", True, simsiam.objective),
    Method("simclr", False, simclr.objective),
    Method("barlow_twins", False, barlow_twins.objective),
    Method("vicreg", False, vicreg.objective),
)}


def get_method(name: str) -> Method:
    """The method called `name`; the error lists the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
