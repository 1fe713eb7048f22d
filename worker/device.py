"""What this worker computes on, in words."""

from __future__ import annotations

import os


def describe_device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    i = torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f"cuda:{i}" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else "")
    return f"{where} {torch.cuda.get_device_name(i)}"
