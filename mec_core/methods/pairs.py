"""The check every two-view objective makes of its inputs."""

from __future__ import annotations

import torch


def check_pair(z1: torch.Tensor, z2: torch.Tensor) -> None:
    """z1 and z2 (m x d) must have one shape: row i of both is image i."""
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have one shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
