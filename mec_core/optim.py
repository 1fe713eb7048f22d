"""Optimizers of the recipe: SGD with momentum (the paper) and LARS (large batches)."""

from __future__ import annotations

import torch
from torch import nn

from mec_core.config import TrainConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al., 2017).

    Each parameter's update is scaled by `trust * ||w|| / ||g + wd w||`. Parameter groups
    with `lars=False` (biases, normalization weights) skip the scaling and the decay, as
    in BYOL and Barlow Twins.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust: float = 0.001) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust=trust, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["trust"] * w_norm / g_norm, 1.0)
                    g = g * ratio
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.clone(g)
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of `config` over the trainable parameters; the lr is set per step."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=0.0, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    matrices = [p for p in params if p.ndim > 1]
    vectors = [p for p in params if p.ndim <= 1]
    return LARS([{"params": matrices}, {"params": vectors, "lars": False, "weight_decay": 0.0}],
                lr=0.0, momentum=config.momentum, weight_decay=config.weight_decay)
