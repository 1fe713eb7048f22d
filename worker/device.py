"""What this worker computes on: in words, and how many training processes it can run."""

from __future__ import annotations

import os

from mec_platform.settings import get_settings


def describe_device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    i = torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f"cuda:{i}" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else "")
    return f"{where} {torch.cuda.get_device_name(i)}"


def process_capacity() -> int:
    """Processes one job may run here (a job's config.processes): MEC_WORKER_PROCESSES,
    else one per visible GPU, else 1."""
    import torch

    return get_settings().worker_processes or torch.cuda.device_count() or 1
