"""Galleries in the database, the one copy that survives anything: a write of items is one
transaction that stamps them with the gallery's next `seq`, so what a write acknowledged
is committed, and a reader that has applied everything up to seq S catches up with
`changes(S)`. Writers of one gallery queue on its row, so seqs commit in order."""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mec_platform.settings import get_settings
from mec_platform.tables import Gallery, GalleryItem, Model, utcnow
from serving.client import TorchServe

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class OtherVersion(RuntimeError):
    """The gallery's model now serves another version than its vectors come from."""


def find(session: Session, project: str, name: str) -> Gallery | None:
    return session.scalar(select(Gallery).where(Gallery.project == project,
                                                Gallery.name == name))


STALE_UPLOAD_S = 3600  # a staging file not written to for this long has no writer left


def staging_folder(artifact_root: Path) -> Path:
    """Where the API stages the items of imports (one NDJSON file each)."""
    return artifact_root / "gallery-imports"


def remove_stale_uploads(artifact_root: Path, now: float) -> list[Path]:
    """Remove the `.partial` files of uploads whose API process died while it streamed
    them (kill -9: its own cleanup never ran). Returns what was removed."""
    removed = []
    for path in staging_folder(artifact_root).glob("*.partial"):
        with contextlib.suppress(FileNotFoundError):  # finished (or removed) meanwhile
            if now - path.stat().st_mtime > STALE_UPLOAD_S:
                path.unlink()
                removed.append(path)
    return removed


def identity(gallery: Gallery) -> dict:
    """What binds a job to this gallery row: not its id alone, as a gallery deleted and
    another created can never share one (migration 0009), but never trust one alone."""
    return {"gallery_id": gallery.id, "gallery": gallery.name,
            "gallery_created_at": gallery.created_at.isoformat()}


def is_bound(gallery: Gallery | None, config: dict) -> bool:
    """Whether `gallery` is the row that the job of `config` (made with identity) is for."""
    return gallery is not None and identity(gallery) == {k: config.get(k) for k in (
        "gallery_id", "gallery", "gallery_created_at")}


def endpoint(session: Session, gallery: Gallery) -> str | None:
    """The model endpoint that embeds images for the gallery (None: not deployed). Raises
    OtherVersion when the model now serves another version than the gallery's vectors."""
    deployment = session.get(Model, gallery.model_id).deployment or {}
    number = deployment.get("number")
    if number != gallery.model_version:
        raise OtherVersion(f"gallery {gallery.name!r} holds embeddings of model "
                           f"{gallery.model_id} deployment {gallery.model_version}; the model "
                           f"now serves deployment {number}, whose embeddings are not "
                           "comparable: create a gallery for it and add the items again")
    return deployment["name"] if deployment.get("status") == "serving" else None


@lru_cache(maxsize=1)
def embed_client() -> TorchServe:
    """The process's client of TorchServe's embeddings (one connection pool and thread
    pool, shared by its requests or its import jobs)."""
    settings = get_settings()
    return TorchServe(settings.torchserve_inference_url, settings.torchserve_management_url,
                      settings.torchserve_home)


def _next_seq(session: Session, gallery_id: int) -> int:
    return session.execute(update(Gallery).where(Gallery.id == gallery_id)
                           .values(seq=Gallery.seq + 1).returning(Gallery.seq)).scalar_one()


def upsert(session: Session, gallery_id: int, ids: list[str], vectors: np.ndarray,
           metas: list[dict | None]) -> int:
    """Insert the items or replace those with the same ids (in this transaction; the
    caller commits). Returns the write's seq."""
    seq = _next_seq(session, gallery_id)
    vectors = np.ascontiguousarray(vectors, np.float32)
    rows = {item_id: {"gallery_id": gallery_id, "item_id": item_id, "metadata": meta,
                      "vector": vector.tobytes(), "seq": seq, "updated_at": utcnow()}
            for item_id, vector, meta in zip(ids, vectors, metas)}  # a repeated id: the last
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    insert = dialect.insert(GalleryItem.__table__)
    session.execute(insert.on_conflict_do_update(
        index_elements=["gallery_id", "item_id"],
        set_={c: insert.excluded[c] for c in ("metadata", "vector", "seq", "updated_at")}),
        list(rows.values()))
    return seq


def delete(session: Session, gallery_id: int, ids: list[str]) -> int:
    """Turn the items into tombstones (in this transaction); returns how many existed."""
    seq = _next_seq(session, gallery_id)
    return session.execute(update(GalleryItem).where(
        GalleryItem.gallery_id == gallery_id, GalleryItem.item_id.in_(ids),
        GalleryItem.vector.is_not(None)).values(
        vector=None, meta=None, seq=seq, updated_at=utcnow())).rowcount


def item(session: Session, gallery_id: int, item_id: str) -> GalleryItem | None:
    found = session.scalar(select(GalleryItem).where(GalleryItem.gallery_id == gallery_id,
                                                     GalleryItem.item_id == item_id))
    return found if found is not None and found.vector is not None else None


def changes(session: Session, gallery_id: int, after: int,
            chunk: int = 20_000) -> Iterator[tuple[int, list[tuple]]]:
    """(seq, [(item_id, metadata, vector or None for a deletion), ...]) in seq order,
    for the writes after seq `after`, a chunk of rows at a time."""
    query = (select(GalleryItem.seq, GalleryItem.item_id, GalleryItem.meta,
                    GalleryItem.vector)
             .where(GalleryItem.gallery_id == gallery_id, GalleryItem.seq > after)
             .order_by(GalleryItem.seq, GalleryItem.id)
             .execution_options(yield_per=chunk))
    for part in session.execute(query).partitions():
        yield part[-1].seq, [(r.item_id, r.meta, r.vector) for r in part]


def _float32(values: list[float]) -> np.ndarray:
    """The values as stored (float32); what float32 cannot hold becomes inf (checked)."""
    with np.errstate(over="ignore"):
        return np.asarray(values, np.float32)


def vectors_of(items: list[dict], dim: int, client: TorchServe,
               endpoint: str | None) -> tuple[list[int], np.ndarray, dict[int, str]]:
    """Unit vectors of items ({"image": base64} or {"vector": [...]}): images embedded by
    the model deployed at `endpoint` (None: not deployed), vectors checked against `dim`
    and l2-normalised. Returns the positions kept, their vectors in that order, and
    {position: what is wrong} for the others."""
    bad, images, vectors = {}, {}, {}
    for position, entry in enumerate(items):
        if entry.get("vector") is not None:
            vector = _float32(entry["vector"])
            if len(vector) != dim:
                bad[position] = f"vector: {len(vector)} values; the gallery's model gives {dim}"
            elif not np.isfinite(vector).all():
                bad[position] = "vector: a value beyond float32's range (±3.4e38)"
            elif not vector.any():
                bad[position] = "vector: zero once stored as float32 (values under 1.4e-45)"
            else:  # the norm in float64: squares of large float32 values overflow
                vectors[position] = vector / np.linalg.norm(vector.astype(np.float64))
            continue
        try:
            images[position] = base64.b64decode(entry["image"], validate=True)
        except (binascii.Error, ValueError):
            bad[position] = "image: not base64"
    if images and endpoint is None:
        bad |= {p: "image: the gallery's model is not deployed, so images cannot be embedded"
                for p in images}
    elif images:
        embedded, refused = client.embed(endpoint, list(images.values()))
        positions = list(images)
        bad |= {positions[i]: f"image: {why}" for i, why in refused.items()}
        kept = [p for i, p in enumerate(positions) if i not in refused]
        vectors |= dict(zip(kept, embedded))
    kept = sorted(vectors)
    stacked = np.stack([vectors[p] for p in kept]) if kept else np.empty((0, dim))
    return kept, stacked.astype(np.float32), bad
