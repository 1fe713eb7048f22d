"""Checkpoint files: written atomically, found by step, loaded without running pickled code."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

PATTERN = re.compile(r"^step_(\d{8})\.pt$")


def save_atomic(obj: Any, path: Path) -> Path:
    """torch.save to a temporary file in the same directory, fsync, then rename.

    A crash mid-write leaves only the temporary file, which `latest` never picks.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def step_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.pt"


def latest(directory: Path) -> Path | None:
    """The complete checkpoint with the highest step in `directory`, or None."""
    if not directory.is_dir():
        return None
    found = sorted(p for p in directory.iterdir() if PATTERN.match(p.name))
    return found[-1] if found else None


def prune(directory: Path, keep: int) -> None:
    """Delete all but the `keep` newest complete checkpoints."""
    found = sorted(p for p in directory.iterdir() if PATTERN.match(p.name))
    for old in found[:-keep]:
        old.unlink(missing_ok=True)


def load(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True: tensors and plain containers, no code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(f"{path} is not a loadable MEC checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a MEC checkpoint (expected keys 'model' and 'config')")
    return ckpt
