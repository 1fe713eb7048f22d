"""An exported encoder that turns uint8 images into l2-normalized embeddings."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from mec_core.augment import Normalization, preprocess
from mec_core.config import stored_config
from mec_core.models import MECModel


class Embedder:
    """Backbone (and optionally the projector) of an export made by `mec export`.

    Weights load with weights_only=True: an export cannot run code when loaded. They stay
    the pages of the export's file (mmap): the worker processes serving one export share a
    single copy, in memory and in the CPU's caches. TorchServe's workers take turns on a
    lone client's requests; with a copy each, two processes taking turns took 0.4 to 0.7 ms
    more per batch-1 forward than with one copy, of 6.5 ms (docs/performance.md).
    """

    def __init__(self, export_dir: str | Path, device: str = "cpu",
                 projector: bool = False) -> None:
        export_dir = Path(export_dir)
        meta = json.loads((export_dir / "model.json").read_text())
        model = MECModel.from_config(stored_config(meta["config"]))
        state = torch.load(export_dir / "encoder.pt", map_location="cpu", weights_only=True,
                           mmap=True)
        model.encoder.load_state_dict(state, assign=True)
        self.net = model.encoder if projector else model.encoder.backbone
        self.net.to(device).eval()
        self.device = device
        self.norm = Normalization.from_dict(meta["normalization"])
        self.projector = projector

    @property
    def dim(self) -> int:
        """The width of its embeddings."""
        blank = torch.zeros(1, self.norm.channels, self.norm.image_size, self.norm.image_size,
                            dtype=torch.uint8)
        return self.embed(blank).shape[1]

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, batch_size: int = 256,
              on_progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """uint8 (N, C, S, S) -> float32 (N, D) unit vectors, on the CPU; `on_progress`
        sees (images embedded, N) after each batch."""
        out = []
        for chunk in images.split(batch_size):
            x = preprocess(chunk.to(self.device), self.norm)
            out.append(F.normalize(self.net(x).float(), dim=1).cpu())
            if on_progress is not None:
                on_progress(sum(len(v) for v in out), len(images))
        return torch.cat(out) if out else torch.empty(0, 0)
