"""Export a trained encoder for downstream use and serving."""

from __future__ import annotations

import json
from pathlib import Path

from mec_core.checkpoint import save_atomic
from mec_core.models import load_model


def export(checkpoint_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write backbone.pt (torchvision state dict), encoder.pt (backbone + projector state
    dict) and model.json (architecture and preprocessing) under `out_dir`."""
    loaded = load_model(checkpoint_path)
    model, config = loaded.model, loaded.config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"backbone": out / "backbone.pt", "encoder": out / "encoder.pt",
             "meta": out / "model.json"}
    save_atomic(model.encoder.backbone.state_dict(), paths["backbone"])
    save_atomic(model.encoder.state_dict(), paths["encoder"])
    meta = {"format": "mec-encoder/1", "backbone": config.backbone,
            "small_stem": model.encoder.backbone.conv1.kernel_size == (3, 3)
            if hasattr(model.encoder.backbone, "conv1") else False,
            "feature_grid": config.feature_grid, "proj_dim": config.proj_dim,
            "step": loaded.step,
            "config": loaded.checkpoint["config"],
            "normalization": loaded.checkpoint["normalization"]}
    paths["meta"].write_text(json.dumps(meta, indent=2))
    return paths
