"""Frozen-feature evaluation: weighted kNN and a linear probe (the usual SSL protocols).

The encoder is the student backbone of a checkpoint, the same backbone at random init
(the baseline every result is shown next to), or raw pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mec_core.augment import Normalization, preprocess
from mec_core.config import SMALL_IMAGE_MAX, TrainConfig, image_size
from mec_core.data import ImageSet, load_dataset
from mec_core.kept_features import fingerprint
from mec_core.models import build_backbone, load_model


@dataclass(frozen=True)
class FeatureSource:
    """How images become features: a backbone and its preprocessing, or raw pixels."""

    backbone: nn.Module | None
    norm: Normalization
    name: str


def from_checkpoint(path: str, device: str = "cpu") -> FeatureSource:
    """The student backbone and preprocessing stored in a training checkpoint."""
    loaded = load_model(path, device)
    return FeatureSource(loaded.model.encoder.backbone.eval(), loaded.normalization,
                         f"{loaded.config.backbone} @ step {loaded.step}")


def random_init(backbone: str, train: ImageSet, size: int, seed: int = 0,
                grid: int = 1) -> FeatureSource:
    """The backbone at its torchvision initialisation (small stem when size <= 64), its
    last map pooled to `grid` x `grid`."""
    torch.manual_seed(seed)
    net, _ = build_backbone(backbone, small_stem=size <= SMALL_IMAGE_MAX, grid=grid)
    return FeatureSource(net.eval(), Normalization.fit(train.images, size),
                         f"{backbone} (random init)")


def raw_pixels(train: ImageSet, size: int) -> FeatureSource:
    return FeatureSource(None, Normalization.fit(train.images, size), "raw pixels")


@torch.inference_mode()
def features(source: FeatureSource, images: torch.Tensor, device: str = "cpu",
             batch_size: int = 512, on_batch: Callable[[int], None] | None = None
             ) -> torch.Tensor:
    """Features (N, F) of uint8 images (N, C, H, W), in float32 on the CPU; `on_batch`
    sees the number of images of each batch done."""
    out = []
    if source.backbone is not None:
        source.backbone.to(device).eval()
    for chunk in images.split(batch_size):
        x = preprocess(chunk.to(device), source.norm)
        f = x.flatten(1) if source.backbone is None else source.backbone(x)
        out.append(f.float().cpu())
        if on_batch is not None:
            on_batch(len(chunk))
    return torch.cat(out)


def _topk_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hits = top5 == labels[:, None]
    return {"top1": 100.0 * hits[:, 0].float().mean().item(),
            "top5": 100.0 * hits.any(1).float().mean().item()}


def knn(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
        test_y: torch.Tensor, k: int = 200, temperature: float = 0.1,
        chunk: int = 1024) -> dict[str, float]:
    """Weighted kNN on cosine similarity (Wu et al. 2018; k = 200, T = 0.1).

    Each of the k nearest training items votes for its class with exp(sim / T).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_f))
    bank = F.normalize(train_f, dim=1)
    scores = []
    for q in F.normalize(test_f, dim=1).split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (q, N) -> (q, k)
        votes = torch.zeros(len(q), classes)
        votes.scatter_add_(1, train_y[idx], (sim / temperature).exp())
        scores.append(votes)
    return _topk_accuracy(torch.cat(scores), test_y)


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                 test_y: torch.Tensor, steps: int = 100, weight_decay: float = 1e-4
                 ) -> dict[str, float]:
    """Multinomial logistic regression on standardized frozen features.

    Full-batch L-BFGS with an L2 penalty: deterministic, and at these sizes (up to about
    10^5 x 2048 features) faster than an SGD schedule.
    """
    mean, std = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
    xtr, xte = (train_f - mean) / std, (test_f - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    head = nn.Linear(xtr.shape[1], classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(xtr), train_y) + weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return _topk_accuracy(head(xte), test_y)


def evaluate(protocol: str, dataset: str, checkpoint_path: str | None = None,
             backbone: str | None = None, pixels: bool = False, data_dir: str | None = None,
             size: int | None = None, device: str = "cpu", train_limit: int | None = None,
             test_limit: int | None = None, k: int = 200, temperature: float = 0.1,
             steps: int = 100, on_progress: Callable[[int, int], None] | None = None,
             on_train_features: Callable[[str, torch.Tensor], None] | None = None) -> dict:
    """Run `protocol` ('knn' or 'linear') on `dataset` and return a JSON-ready result.

    Exactly one encoder: `checkpoint_path`, `backbone` (random init) or `pixels`.
    `on_progress`: (images embedded, of all: train and test), after each batch.
    `on_train_features`: (their fingerprint, the train images' features) once embedded,
    for a network's features (mec_core.kept_features), not raw pixels.
    """
    if protocol not in ("knn", "linear"):
        raise ValueError(f"protocol must be 'knn' or 'linear', got {protocol!r}")
    if sum([checkpoint_path is not None, backbone is not None, pixels]) != 1:
        raise ValueError("give exactly one of a checkpoint, a backbone (random init) or pixels")
    source = from_checkpoint(checkpoint_path, device) if checkpoint_path is not None else None
    # a checkpoint's images are decoded at its own size, as it was trained and is served
    # (a deploy's reference set too: serving.package), not resized from another one
    size = size or (source.norm.image_size if source is not None else None)
    train = load_dataset(dataset, "train", data_dir, size).head(train_limit)
    test = load_dataset(dataset, "test", data_dir, size).head(test_limit)
    if source is None:
        probe = TrainConfig(dataset=dataset, image_size=size)
        side = image_size(probe)
        source = random_init(backbone, train, side, grid=probe.feature_grid) if backbone \
            else raw_pixels(train, side)
    if train.channels != source.norm.channels:
        raise ValueError(f"{dataset} has {train.channels} channel(s) but the encoder was "
                         f"trained on {source.norm.channels}")
    done, total = [0], len(train) + len(test)

    def embedded(images: int) -> None:
        done[0] += images
        if on_progress is not None:
            on_progress(done[0], total)

    ftr = features(source, train.images, device, on_batch=embedded)
    if on_train_features is not None and source.backbone is not None:
        on_train_features(fingerprint(source.backbone, source.norm, train.images), ftr)
    fte = features(source, test.images, device, on_batch=embedded)
    if protocol == "knn":
        scores = knn(ftr, train.labels, fte, test.labels, k, temperature)
    else:
        scores = linear_probe(ftr, train.labels, fte, test.labels, steps)
    return {"protocol": protocol, "dataset": dataset, "encoder": source.name, **scores,
            "train_size": len(train), "test_size": len(test), "feature_dim": ftr.shape[1]}
