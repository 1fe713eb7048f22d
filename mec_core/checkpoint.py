"""Checkpoint files: written atomically, found by step, loaded without running pickled code,
and checked to be of the one format this version writes."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import torch

from mec_core.writes import naming

FORMAT = "mec-checkpoint/1"
PATTERN = re.compile(r"^step_(\d{8})\.pt$")


def save_atomic(obj: Any, path: Path) -> Path:
    """torch.save to a temporary file in the same directory, fsync, then rename.

    The bytes are serialised in memory first, so that a full disk surfaces as an OSError
    that names the file (torch's own writer reports it as an opaque RuntimeError); the
    temporary file is then removed. A crash mid-write leaves only the temporary file,
    which `latest` never picks and `Checkpointer.save` removes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with naming(path):
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
    return path


def step_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.pt"


def _complete(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if PATTERN.match(p.name))


def latest(directory: Path) -> Path | None:
    """The complete checkpoint with the highest step in `directory`, or None."""
    found = _complete(directory)
    return found[-1] if found else None


def load(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True (tensors and plain containers, no code)
    and check that it is a training checkpoint of FORMAT."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(f"{path} is not a loadable MEC checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a MEC checkpoint (expected keys 'model' and 'config')")
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} has checkpoint format {ckpt.get('format')!r}; this version "
                         f"reads {FORMAT!r}")
    return ckpt


class Checkpointer:
    """The checkpoints of one run: `save` writes step_XXXXXXXX.pt of FORMAT atomically
    and keeps the `keep` newest; `latest` is where a resumed run starts."""

    def __init__(self, directory: Path, keep: int = 3) -> None:
        self.directory, self.keep = directory, keep

    def latest(self) -> Path | None:
        return latest(self.directory)

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = save_atomic({"format": FORMAT, "step": step, **state},
                           step_path(self.directory, step))
        # temporary files of writers that crashed (a job's lease allows one at a time)
        for stale in self.directory.glob(".step_*.tmp"):
            stale.unlink(missing_ok=True)
        for old in _complete(self.directory)[:-self.keep]:
            old.unlink(missing_ok=True)
        return path
