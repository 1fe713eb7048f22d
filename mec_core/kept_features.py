"""An evaluation's features of its train images, kept with a fingerprint of what made them
(the network's weights, its preprocessing and the images), so that a deploy of the same
model on the same images reuses them instead of embedding every image again."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mec_core.augment import Normalization

FORMAT = "mec-kept-features/1"  # part of the fingerprint: a new format never matches an old file


def fingerprint(net: nn.Module, norm: Normalization, images: torch.Tensor) -> str:
    """What a network's features of uint8 `images` depend on, as a digest: every
    parameter and buffer (names and bytes), the preprocessing, the images' shape and
    pixels. Two equal digests mean the same features, up to the rounding of another batch
    size or device."""
    digest = hashlib.sha256(f"{FORMAT}\0{norm!r}\0{tuple(images.shape)}".encode())
    for name, tensor in net.state_dict().items():
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy())
    digest.update(images.contiguous().numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class Kept:
    fingerprint: str
    features: np.ndarray  # (N, D) float32, as the backbone gives them (not normalized)
    job_id: int  # the evaluation job that computed them

    def save(self, path: Path) -> None:
        """An .npz file (the platform stores it whole or not at all: mec_platform.storage)."""
        with open(path, "wb") as f:
            np.savez(f, fingerprint=np.array(self.fingerprint), job_id=np.array(self.job_id),
                     features=np.ascontiguousarray(self.features, dtype=np.float32))

    @staticmethod
    def read(path: Path) -> Kept | None:
        """The file's content; None when there is none or it is not such a file (the
        caller then embeds the images as if nothing had been kept)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                return Kept(str(f["fingerprint"]), f["features"], int(f["job_id"]))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return None
