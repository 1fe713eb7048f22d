"""Online monitor: judge a run while it trains, from its backbone's frozen features.

Every N steps the current backbone embeds a labelled bank and a held-out part of the
training set (images the run never trains on); the kNN top-1 of the held-out images
against the bank and the effective rank of their features become metrics of the step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from mec_core.augment import Normalization
from mec_core.config import held_out
from mec_core.data import ImageSet
from mec_core.evaluate import FeatureSource, features, knn

BANK = 4000  # at most this many bank images
K = 20  # neighbours that vote; the bank is small, so fewer than the final protocol's 200
BUDGET = 0.05  # the monitor skips a due evaluation while it has used more of the run


def effective_rank(f: torch.Tensor) -> float:
    """exp of the entropy of the normalized singular values of f (N x F) (Roy & Vetterli,
    2007; RankMe, Garrido et al., 2023): between 1 (collapsed) and min(N, F)."""
    s = torch.linalg.svdvals(f.float())
    p = s / s.sum().clamp_min(1e-12) + 1e-7
    return float(torch.exp(-(p * p.log()).sum()))


def holdout(data: ImageSet) -> tuple[ImageSet, ImageSet]:
    """(training part, held-out part): the last tenth of a training split's images, at
    most config.HOLDOUT; a run's `train_limit` then takes the first images of the training part."""
    keep = len(data) - held_out(len(data))
    return (ImageSet(data.images[:keep], data.labels[:keep], data.classes),
            ImageSet(data.images[keep:], data.labels[keep:], data.classes))


@dataclass
class Monitor:
    """kNN top-1 (in %) of `queries` against the first BANK images of `bank`, and the
    effective rank of the queries' features, every `every` steps (the trainer also asks
    at the last step, so a finished run's result carries them). Call it under the
    training's autocast: the features need no more precision than the training has."""

    bank: ImageSet
    queries: ImageSet
    norm: Normalization
    every: int
    device: torch.device

    seconds: float = 0.0  # spent in the monitor so far: its cost, reported with its metrics

    def due(self, step: int, elapsed: float) -> bool:
        """Every `every` steps, unless the monitor has already taken more than BUDGET of
        the `elapsed` training seconds (short runs with cheap steps)."""
        return (self.every > 0 and len(self.queries) > 0 and step % self.every == 0
                and self.seconds <= BUDGET * elapsed)

    def __call__(self, backbone: nn.Module) -> dict[str, float]:
        started = time.perf_counter()
        bank = self.bank.head(BANK)
        was_training = backbone.training
        backbone.eval()  # running BatchNorm statistics, as the final evaluation uses
        try:
            source = FeatureSource(backbone, self.norm, "monitor")
            fb = features(source, bank.images, str(self.device))
            fq = features(source, self.queries.images, str(self.device))
        finally:
            backbone.train(was_training)
        with torch.autocast(fb.device.type, enabled=False):  # votes and SVD in float32
            if torch.isfinite(fb).all() and torch.isfinite(fq).all():
                values = {"knn_top1": knn(fb, bank.labels, fq, self.queries.labels,
                                          k=K)["top1"], "effective_rank": effective_rank(fq)}
            else:  # a diverged backbone: the trainer reports the non-finite step
                values = {"knn_top1": float("nan"), "effective_rank": float("nan")}
        self.seconds += time.perf_counter() - started
        return values | {"monitor_seconds": self.seconds}

