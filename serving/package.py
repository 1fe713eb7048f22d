"""Build TorchServe archives (.mar) from a training checkpoint: the encoder, its
preprocessing, and the reference set: an index of labelled embeddings."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mec_core.config import stored_config
from mec_core.data import load_dataset
from mec_core.export import export
from mec_core.kept_features import Kept, fingerprint
from serving.embedder import Embedder
from serving.reference_set import INDEX_FILE, META_FILE, ReferenceSet

HANDLER = Path(__file__).with_name("handler.py")
SPOT_CHECKS = 16  # images a deploy embeds to check an evaluation's kept features
# cosine of a spot-checked image's embedding and its kept row: the same network in float32
# gives 1 - 1e-7; on a GPU with TF32 convolutions, 1 - 1e-5 or so
AGREEMENT = 0.999
log = logging.getLogger(__name__)


def build_reference_set(export_dir: Path, dataset: str, data_dir: str | None, split: str,
                  limit: int | None, kind: str = "auto", projector: bool = False,
                  images_to: Path | None = None,
                  on_progress: Callable[[int, int], None] | None = None,
                  kept: Callable[[str], Kept | None] | None = None
                  ) -> tuple[ReferenceSet, int | None]:
    """Embed a labelled dataset; item ids are '<split>/<index>'. `images_to`: also write the
    items' pixels there (uint8, N x H x W x C, .npy; row i is item '<split>/<i>'), written
    atomically, for showing search results. `on_progress`: (images embedded, of all).
    `kept`: finds an evaluation's features by their fingerprint (worker.kept.finder); those
    of these images by this network are used instead of embedding when they pass the check
    of _reusable. Returns the set, and the evaluation job whose features it used (None:
    embedded)."""
    embedder = Embedder(export_dir, projector=projector)
    items = load_dataset(dataset, split, data_dir, embedder.norm.image_size).head(limit)
    # resized like evaluation when sizes differ
    found = None
    if kept is not None:
        digest = fingerprint(embedder.net, embedder.norm, items.images)
        found = kept(digest)
    reused = found is not None and _reusable(found, digest, embedder, items.images)
    if reused:
        vectors = F.normalize(torch.from_numpy(found.features), dim=1)
        if on_progress is not None:
            on_progress(len(items), len(items))
    else:
        vectors = embedder.embed(items.images, on_progress=on_progress)
    labels = [items.classes[i] for i in items.labels.tolist()]
    if images_to is not None:
        images_to.parent.mkdir(parents=True, exist_ok=True)
        partial = images_to.with_suffix(".partial.npy")
        np.save(partial, items.images.permute(0, 2, 3, 1).contiguous().numpy())
        partial.replace(images_to)
    return ReferenceSet.build(vectors.numpy(), [f"{split}/{i}" for i in range(len(items))],
                              labels, kind), found.job_id if reused else None


def _reusable(kept: Kept, digest: str, embedder: Embedder, images: torch.Tensor) -> bool:
    """Whether `kept`, found under these images' fingerprint `digest`, holds their
    features by this network: the same fingerprint inside, one finite, non-zero float row
    per image, and SPOT_CHECKS images embedded now agreeing with their rows. A file
    damaged, altered or moved in the store is embedded over (with a warning in the
    deploy's log), never served."""
    f = kept.features
    if (kept.fingerprint == digest and f.ndim == 2 and len(f) == len(images)
            and f.dtype.kind == "f" and np.isfinite(f).all() and (f != 0).any(axis=1).all()):
        rows = torch.linspace(0, len(images) - 1, min(SPOT_CHECKS, len(images))).long()
        fresh = embedder.embed(images[rows])
        old = F.normalize(torch.from_numpy(f[rows.numpy()]).float(), dim=1)
        if fresh.shape == old.shape and bool(((fresh * old).sum(1) >= AGREEMENT).all()):
            return True
    log.warning("the features that evaluation job %s kept of these images do not agree with "
                "the model (a damaged, altered or moved file): embedding the images instead",
                kept.job_id)
    return False


@dataclass(frozen=True)
class Packaged:
    archives: dict[str, Path]  # task ("embed", "knn") -> its .mar
    reused_from: int | None  # the evaluation job whose features the reference set reused


def package(checkpoint: str | Path, out_dir: str | Path, name: str, version: str = "1.0",
            reference_dataset: str | None = None, reference_data_dir: str | None = None,
            reference_split: str = "train", reference_limit: int | None = None,
            max_k: int = 100, projector: bool = False,
            torch_threads: int | None = None,
            reference_images: Path | None = None,
            on_progress: Callable[[int, int], None] | None = None,
            deployment: int | None = None,
            kept: Callable[[str], Kept | None] | None = None) -> Packaged:
    """Write `{name}.mar` (embedding) and `{name}-knn.mar` (retrieval) into `out_dir`.

    Embeddings are the backbone's features (what kNN evaluation measures), or the
    projector's outputs with `projector`. `torch_threads`: the intra-op threads of each
    TorchServe worker (default: torch's, one per core). `reference_images`: where to keep
    the reference set's pixels for showing search results (build_reference_set's
    `images_to`). `on_progress`: (reference images embedded, of all). `deployment`: the
    platform's number of this deployment, the answers' `model_version` (`version` is
    TorchServe's own). `kept`: finds the model's last evaluation's features by their
    fingerprint, reused when they are of the same images (build_reference_set)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export(checkpoint, work / "export")
        trained = stored_config(json.loads((work / "export" / "model.json").read_text())[
            "config"])
        dataset = reference_dataset or trained.dataset
        data_dir = reference_data_dir or (trained.data_dir if dataset == trained.dataset
                                          else None)
        references, reused_from = build_reference_set(
            work / "export", dataset, data_dir, reference_split, reference_limit,
            projector=projector, images_to=reference_images, on_progress=on_progress,
            kept=kept)
        references.save(work / "references")
        archives = {}
        for task, suffix in (("embed", ""), ("knn", "-knn")):
            (work / "serving.json").write_text(json.dumps({
                "task": task, "max_k": max_k, "projector": projector,
                "torch_threads": torch_threads, "deployment": deployment}))
            # the archiver puts every file at the archive's root
            extra = [work / "export" / "encoder.pt", work / "export" / "model.json",
                     work / "serving.json"]
            if task == "knn":
                extra += [work / "references" / INDEX_FILE, work / "references" / META_FILE]
            _archive(f"{name}{suffix}", version, extra, out, work)
            archives[task] = out / f"{name}{suffix}.mar"
    return Packaged(archives, reused_from)


def _archive(name: str, version: str, extra: list[Path], out: Path, tmp: Path) -> None:
    """torch-model-archiver stages its files in $TMPDIR/<name>: a temporary folder of
    our own, so that two deploys of the same model name on one host (two stacks) do not
    share it."""
    archiver = shutil.which("torch-model-archiver") or str(
        Path(sys.executable).with_name("torch-model-archiver"))
    cmd = [archiver, "--model-name", name, "--version", version, "--handler", str(HANDLER),
           "--extra-files", ",".join(str(p) for p in extra), "--export-path", str(out),
           "--force"]
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env=os.environ | {"TMPDIR": str(tmp)})
    if done.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed: {done.stderr.strip()[-2000:]}")
