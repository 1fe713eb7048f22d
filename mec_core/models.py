"""Encoders of MEC: backbone + 3-layer projector, 2-layer predictor, EMA teacher.

The layout follows the paper's reference code (itself after SimSiam): the projector ends
in a BatchNorm without affine parameters, the predictor sits on the student only, and the
teacher is an exponential moving average of the student's backbone and projector.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from mec_core import checkpoint
from mec_core.augment import Normalization
from mec_core.config import (
    BACKBONES,
    TrainConfig,
    resolve_predictor,
    resolve_teacher,
    small_stem,
    stored_config,
)


def _small_convnet(grid: int) -> nn.Module:
    """A 4-block convnet (about 0.4 M parameters) for CPU demos and tests; 256 channels
    pooled to a grid x grid map."""
    layers: list[nn.Module] = []
    widths = [3, 32, 64, 128, 256]
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        stride = 1 if i == 0 else 2
        layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
    layers += [nn.AdaptiveAvgPool2d(grid), nn.Flatten()]
    return nn.Sequential(*layers)


def build_backbone(name: str, small_stem: bool = False, grid: int = 1
                   ) -> tuple[nn.Module, int]:
    """A backbone that maps (B, 3, H, W) images to (B, F) features, and F.

    The last feature map is average-pooled to `grid` x `grid` and flattened (1: global
    average pooling, F = its channels; 2 keeps the coarse layout of small images).

    ResNets are torchvision's own, with `fc` replaced by Identity, so their state dict has
    torchvision's key names and loads into `torchvision.models.resnet*` with strict=False
    (only `fc.*` missing). `small_stem` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv,
    the usual stem for 28-64 px images.
    """
    if name == "convnet":
        return _small_convnet(grid), 256 * grid * grid
    if name not in ("resnet18", "resnet50"):
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    net = getattr(torchvision.models, name)(weights=None, zero_init_residual=True)
    if small_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.avgpool = nn.AdaptiveAvgPool2d(grid)  # no parameters: the state dict is unchanged
    features = net.fc.in_features * grid * grid
    net.fc = nn.Identity()
    return net, features


def projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """3-layer MLP; the last BatchNorm has no affine parameters (reference code)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(True),
        nn.Linear(hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(True),
        nn.Linear(hidden_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False),
    )


def predictor(dim: int, hidden_dim: int) -> nn.Sequential:
    """2-layer bottleneck MLP on the student only (reference code: hidden 512)."""
    return nn.Sequential(
        nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(True),
        nn.Linear(hidden_dim, dim),
    )


class Encoder(nn.Module):
    """Backbone followed by the projector: images (B, 3, H, W) -> embeddings (B, d)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


class MECModel(nn.Module):
    """Student (encoder + predictor) and where its targets come from.

    `teacher`: "ema" keeps an exponential moving average of the encoder (MEC, BYOL);
    "stop_grad" uses the student's own projections behind a stop-gradient (SimSiam, and
    the momentum-0 ablation of Table 5); "none" returns the projections themselves, with
    their gradient: the objective compares the two views with gradients through both
    (SimCLR, Barlow Twins, VICReg, and MEC without a stop-gradient).
    `use_predictor=False` is the symmetric ablation of Table 5.
    """

    def __init__(self, backbone: str, proj_dim: int, proj_hidden_dim: int | None,
                 pred_hidden_dim: int, use_predictor: bool = True, small_stem: bool = False,
                 teacher: str = "ema", grid: int = 1) -> None:
        super().__init__()
        if teacher not in ("ema", "stop_grad", "none"):
            raise ValueError(f"teacher must be 'ema', 'stop_grad' or 'none', got {teacher!r}")
        net, features = build_backbone(backbone, small_stem, grid)
        self.encoder = Encoder(net, projector(features, proj_hidden_dim or features, proj_dim))
        self.predictor = predictor(proj_dim, pred_hidden_dim) if use_predictor else nn.Identity()
        self.targets = teacher
        self.teacher: Encoder | None = None
        if teacher == "ema":
            self.teacher = copy.deepcopy(self.encoder)
            self.teacher.requires_grad_(False)

    @classmethod
    def from_config(cls, config: TrainConfig) -> MECModel:
        """The network of `config.method` (its predictor and targets) for a run."""
        return cls(config.backbone, config.proj_dim, config.proj_hidden_dim,
                   config.pred_hidden_dim, use_predictor=resolve_predictor(config),
                   small_stem=small_stem(config), teacher=resolve_teacher(config),
                   grid=config.feature_grid)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        """Two views (B, 3, H, W) -> student outputs s1, s2 and targets t1, t2 (B, d).

        Each view passes separately, so BatchNorm statistics are per view as in the
        reference code. Without an EMA teacher the targets are the student's own
        projections (detached for "stop_grad"), so no second forward pass runs.
        """
        z1, z2 = self.encoder(x1), self.encoder(x2)
        s1, s2 = self.predictor(z1), self.predictor(z2)
        if self.teacher is None:
            if self.targets == "stop_grad":
                return s1, s2, z1.detach(), z2.detach()
            return s1, s2, z1, z2
        with torch.no_grad():
            t1, t2 = self.teacher(x1), self.teacher(x2)
        return s1, s2, t1, t2


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, fused over all parameters."""
    t = [p for p in teacher.parameters()]
    s = [p.detach() for p in student.parameters()]
    if len(t) != len(s):
        raise ValueError(f"teacher has {len(t)} parameters, student {len(s)}")
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)


@dataclass
class Loaded:
    """A network restored from a training checkpoint, with what it was trained with."""

    model: MECModel
    config: TrainConfig
    normalization: Normalization
    step: int
    checkpoint: dict


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """The network of a training checkpoint (loaded with weights_only, format checked)."""
    state = checkpoint.load(path, device)
    config = stored_config(state["config"])
    model = MECModel.from_config(config)
    model.load_state_dict(state["model"])
    return Loaded(model.to(device), config, Normalization.from_dict(state["normalization"]),
                  int(state["step"]), state)
