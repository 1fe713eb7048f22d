"""A model's last evaluation keeps its features of the train images in the store, one file
per model that each evaluation replaces, named by the fingerprint of what made them, so
that a deploy of the model on the same images finds them by their fingerprint and uses
them instead of embedding every image again (serving.package.build_reference_set); a
deploy of other images reads nothing."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from mec_core.kept_features import Kept
from mec_platform import storage
from mec_platform.settings import get_settings


def folder(model_id: int) -> str:
    return f"features/mec-{model_id}/"


def key(model_id: int, fingerprint: str) -> str:
    return f"{folder(model_id)}{fingerprint}.npz"


def keep(model_id: int, job_id: int, fingerprint: str, features: torch.Tensor) -> None:
    """Store the file, then remove the model's earlier ones."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.npz"
        Kept(fingerprint, features.numpy(), job_id).save(path)
        storage.keep(path, key(model_id, fingerprint), move=True)
    store = storage.get_store()
    for old in store.keys(folder(model_id)):
        if old != key(model_id, fingerprint):
            store.delete(old)
    store.delete(f"features/mec-{model_id}.npz")  # its name until 2026-12-06, unfingerprinted


def finder(model_id: int) -> Callable[[str], Kept | None] | None:
    """For a deploy: what the model's last evaluation kept under a fingerprint (None if
    nothing); no lookup at all when keeping is off (MEC_KEEP_EVALUATION_FEATURES=false:
    deploys embed, whatever an evaluation kept before, without fingerprinting)."""
    if not get_settings().keep_evaluation_features:
        return None

    def find(fingerprint: str) -> Kept | None:
        store = storage.get_store()
        if store.stat(key(model_id, fingerprint)) is None:
            return None
        return Kept.read(storage.local_file(store.ref(key(model_id, fingerprint))))
    return find
