"""Data-parallel helpers: process group from torchrun's environment, gathering with
gradient, and batch statistics over the global batch.

MEC's m is the global batch (Sec. 2; reference code): embeddings are gathered from every
process *with* their gradient, and BatchNorm statistics are computed over all processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's rank among `size` processes and its device."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> World:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*).

    NCCL on CUDA, gloo on the CPU; each CUDA process takes the GPU of its local rank.
    Without torchrun this is a world of one and nothing is initialized.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(0, 1, torch.device(device))
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), dev)


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (b, ...) from every process in rank order -> (world * b, ...).

    Gradients flow back to each process's own rows (torch.distributed.nn's all_gather).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(dist_fn.all_gather(x.contiguous()))


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the batch of every process, on the CPU.

    torch.nn.SyncBatchNorm does this for GPUs but refuses CPU tensors; this module fills
    that gap for gloo runs (it assumes every process holds the same number of samples).
    It keeps BatchNorm's parameters and buffers, so state dicts are interchangeable.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.ndim < 2:
            raise ValueError(f"expected at least 2-D input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, C, ...) in any dtype -> the same shape and dtype, normalised with the
        statistics of all processes' b rows.

        Under autocast x is bf16 or fp16; the statistics are computed, reduced and applied in
        float32 (as SyncBatchNorm does): sums of b x H x W terms in bf16 would lose the small
        differences that make the variance, and the running buffers stay float32.
        """
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        n = x.numel() // x.shape[1] * dist.get_world_size()
        with torch.autocast(x.device.type, enabled=False):
            xf = x.float()
            # two passes (mean, then centred squares) for the precision of a one-process run
            mean = dist_fn.all_reduce(xf.sum(dims)) / n  # (C,)
            var = dist_fn.all_reduce(((xf - mean.view(shape)) ** 2).sum(dims)) / n  # (C,)
            if self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                    unbiased = var * n / max(n - 1, 1)
                    self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
            y = (xf - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
            if self.affine:
                y = y * self.weight.float().view(shape) + self.bias.float().view(shape)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm in `module` use global-batch statistics."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            bn = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats)
            # the same Parameter and buffer objects: an optimizer built before keeps working
            for key, value in list(child.named_parameters(recurse=False)):
                setattr(bn, key, value)
            for key, value in list(child.named_buffers(recurse=False)):
                setattr(bn, key, value)
            setattr(module, name, bn)
        else:
            sync_batchnorm(child, device)
    return module
