"""A model's last evaluation keeps its features of the train images in the store, one file
per model that each evaluation replaces, so that a deploy of the model on the same images
uses them instead of embedding every image again (serving.package.build_reference_set)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from mec_core.kept_features import Kept
from mec_platform import storage
from mec_platform.settings import get_settings


def key(model_id: int) -> str:
    return f"features/mec-{model_id}.npz"


def keep(model_id: int, job_id: int, fingerprint: str, features: torch.Tensor) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.npz"
        Kept(fingerprint, features.numpy(), job_id).save(path)
        storage.keep(path, key(model_id), move=True)


def last(model_id: int) -> Kept | None:
    """What the model's last evaluation kept, for a deploy; None if none has, or when
    keeping is off (MEC_KEEP_EVALUATION_FEATURES=false: deploys embed, whatever an
    evaluation kept before)."""
    store = storage.get_store()
    if not get_settings().keep_evaluation_features or store.stat(key(model_id)) is None:
        return None
    return Kept.read(storage.local_file(store.ref(key(model_id))))
