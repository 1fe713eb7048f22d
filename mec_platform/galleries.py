"""Apps' galleries: the service the /v1/galleries routes and the import task call, and
the rows, the one copy that survives anything. A write of items is one transaction that
stamps them with the gallery's next `seq`, so what a write acknowledged is committed, and
a reader that has applied everything up to seq S catches up with the writes after S
(gallery_indexes). Writers of one gallery queue on its row, so seqs commit in order.

A gallery is found by name in the key's project; refusals are mec_platform.errors, whose
messages name the field at fault."""

from __future__ import annotations

import base64
import binascii
import io
import json
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete as delete_rows
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mec_platform import gallery_indexes, jobs, keys, model_server, storage
from mec_platform.errors import BadInput, Conflict, Invalid, NotFound, TooMany, Unavailable
from mec_platform.jobs import JobKind, JobStatus
from mec_platform.queue import Queue
from mec_platform.settings import get_settings
from mec_platform.tables import ApiKey, Gallery, GalleryItem, Job, Model, utcnow
from serving.client import TorchServe
from serving.client import Unavailable as Unreachable
from serving.vector_index import FilterError, parse_filter

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
THUMBNAIL = 96  # px, the longer side of an image item's thumbnail


class OtherVersion(Conflict):
    """The gallery's model now serves another version than its vectors come from."""


def find(session: Session, project: str, name: str) -> Gallery | None:
    return session.scalar(select(Gallery).where(Gallery.project == project,
                                                Gallery.name == name))


def get(session: Session, key: ApiKey, name: str) -> Gallery:
    """The key's project's gallery of this name (NotFound)."""
    gallery = find(session, key.project, name)
    if gallery is None:
        raise NotFound(f"gallery {name!r} not found")
    return gallery


def listed(session: Session, key: ApiKey, name: str, ids: list[str] | None, offset: int,
           limit: int) -> tuple[list[tuple[str, Any, bytes | None]], int]:
    """A page of the gallery's live items in the order they were added (or of the `ids`
    given): (id, metadata, thumbnail PNG or None) of each, and how many there are."""
    gallery = get(session, key, name)
    where = [GalleryItem.gallery_id == gallery.id, GalleryItem.vector.is_not(None)]
    if ids is not None:
        where.append(GalleryItem.item_id.in_(ids))
    rows = session.execute(select(GalleryItem.item_id, GalleryItem.meta, GalleryItem.thumbnail)
                           .where(*where).order_by(GalleryItem.id).offset(offset).limit(limit))
    return [tuple(row) for row in rows], session.scalar(select(func.count()).where(*where))


def visible(session: Session, key: ApiKey) -> list[Gallery]:
    """The key's project's galleries (an admin key: every project's)."""
    query = select(Gallery) if keys.sees_all(key) else \
        select(Gallery).where(Gallery.project == key.project)
    return list(session.scalars(query.order_by(Gallery.project, Gallery.name)))


def size(session: Session, gallery: Gallery) -> int:
    """Its items (not counting deleted ones)."""
    return session.scalar(select(func.count()).where(GalleryItem.gallery_id == gallery.id,
                                                     GalleryItem.vector.is_not(None)))


def create(session: Session, key: ApiKey, name: str, model_id: int) -> Gallery:
    """A new, empty gallery of the key's project, bound to the model's serving deployment
    (its number and the embeddings' width)."""
    model = session.get(Model, model_id)
    if model is None or not keys.sees(key, model.project):
        raise NotFound(f"model_id: model {model_id} not found")
    deployment = model.deployment
    if deployment is None or not deployment.serving or deployment.dim is None:
        raise Conflict(f"model_id: model {model.id} is not deployed (or was deployed before "
                       "galleries existed); deploy it first")
    gallery = Gallery(project=key.project, name=name, model_id=model.id,
                      model_version=deployment.number, dim=deployment.dim, seq=0)
    session.add(gallery)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"name: a gallery {name!r} exists") from None
    return gallery


def remove(session: Session, key: ApiKey, name: str) -> None:
    """Delete the gallery and all its items."""
    gallery = get(session, key, name)
    session.execute(delete_rows(GalleryItem).where(GalleryItem.gallery_id == gallery.id))
    session.delete(gallery)
    session.commit()
    gallery_indexes.forget(gallery.id)


def add(session: Session, key: ApiKey, name: str, items: list[dict]) -> tuple[int, int]:
    """Embed and write the items now, all or none: (items written, the write's seq).
    Nothing is held in the database while the model embeds; a bad item is BadInput (an
    image) or Invalid (a vector), naming it (items[N]...)."""
    gallery = get(session, key, name)
    found = endpoint(session, gallery)
    dim, gallery_id = gallery.dim, gallery.id
    session.rollback()  # no transaction held while the model embeds
    try:
        kept, vectors, bad = vectors_of(items, dim, embed_client(), found)
    except Unreachable as exc:
        raise Unavailable(str(exc)) from None
    if bad:
        first = min(bad)
        refusal = BadInput if bad[first].startswith("image") else Invalid
        raise refusal("; ".join(f"items[{p}].{bad[p]}" for p in sorted(bad)))
    endpoint(session, gallery)  # still the same version after embedding
    seq = upsert(session, gallery_id, [items[p] for p in kept], vectors)
    session.commit()
    return len(kept), seq


def check_import_room(session: Session, project: str) -> None:
    """A project may have at most MEC_MAX_QUEUED_IMPORTS imports waiting (TooMany)."""
    most = get_settings().max_queued_imports
    queued = session.scalar(select(func.count()).select_from(Job).where(
        Job.project == project, Job.kind == JobKind.GALLERY, Job.status == JobStatus.QUEUED))
    if queued >= most:
        raise TooMany(f"project {project!r} has {queued} imports queued, the most it may "
                      "(MEC_MAX_QUEUED_IMPORTS); retry when some have run",
                      headers={"Retry-After": "30"})


def stage(items: list[dict], path: Path) -> Path:
    """Stage the items for an import at `path` (in an upload's staging folder), one JSON
    object per line."""
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def submit_import(session: Session, key: ApiKey, name: str, staged: Path,
                  count: int) -> Job:
    """The job that writes the staged items, kept in the store, into the gallery; a
    refusal removes them."""
    try:
        gallery = get(session, key, name)
        endpoint(session, gallery)
    except (NotFound, OtherVersion):
        staged.unlink()  # nothing will read it
        raise
    items = storage.keep(staged, f"gallery-imports/{uuid.uuid4().hex}.ndjson", move=True)
    return jobs.submit(session, JobKind.GALLERY, {
        **identity(gallery), "items": items, "count": count}, Queue.CPU,
        f"add {count} items to gallery {gallery.name}", project=key.project)


def import_of(session: Session, key: ApiKey, name: str, job_id: int) -> Job:
    """An import into the gallery (NotFound for any other job)."""
    gallery = get(session, key, name)
    job = session.get(Job, job_id)
    if job is None or job.kind != JobKind.GALLERY or not is_bound(gallery, job.config):
        raise NotFound(f"job_id: no import {job_id} into gallery {name!r}")
    return job


def get_item(session: Session, key: ApiKey, name: str, item_id: str) -> GalleryItem:
    found = item(session, get(session, key, name).id, item_id)
    if found is None:
        raise NotFound(f"item_id: no item {item_id!r} in gallery {name!r}")
    return found


def delete_item(session: Session, key: ApiKey, name: str, item_id: str) -> None:
    deleted = delete(session, get(session, key, name).id, [item_id])
    session.commit()
    if not deleted:
        raise NotFound(f"item_id: no item {item_id!r} in gallery {name!r}")


def delete_items(session: Session, key: ApiKey, name: str, ids: list[str] | None,
                 where: dict | None) -> int:
    """Delete items by ids, else every item the metadata filter `where` keeps (None:
    every item). Returns how many existed."""
    gallery = get(session, key, name)
    if ids is None:
        allowed = _filter(where)
        with gallery_indexes.current(session, gallery) as index:
            ids = index.matching(allowed)
    deleted = delete(session, gallery.id, ids) if ids else 0
    session.commit()
    return deleted


def search(session: Session, key: ApiKey, name: str, *, image: str | None = None,
           vector: list[float] | None = None, item_id: str | None = None, k: int = 10,
           where: dict | None = None) -> tuple[list[dict], int | None]:
    """The k items nearest to an image, a vector or an item of the gallery (left out of
    its own results), among those the metadata filter `where` keeps: (hits, the
    deployment number of the gallery's vectors)."""
    gallery = get(session, key, name)
    found = endpoint(session, gallery)
    allowed = _filter(where)
    query = None
    if image is not None:
        query = _embedded(image, found)
    elif vector is not None:
        if not any(vector):
            raise Invalid("vector: all zeros")
        _, query, bad = vectors_of([{"vector": vector}], gallery.dim, None, None)
        if bad:  # checked and normalised as an added vector
            raise Invalid(bad[0])
    with gallery_indexes.current(session, gallery) as index:
        if item_id is not None:
            stored = index.get(item_id)
            if stored is None:
                raise NotFound(f"item_id: no item {item_id!r} in gallery {name!r}")
            query = stored[0]
        hits = index.search(query, k, allowed, exclude=item_id)[0]
    return hits, gallery.model_version


def _embedded(image: str, found: str | None) -> np.ndarray:
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("image: not base64") from None
    if found is None:
        raise Conflict("image: the gallery's model is not deployed, so images cannot be "
                       "embedded; search by vector or item_id (`mec gallery search NAME "
                       "--like ITEM_ID`)")
    try:
        vectors, bad = embed_client().embed(found, [data])
    except Unreachable as exc:
        raise Unavailable(str(exc)) from None
    if bad:
        raise BadInput(f"image: {bad[0]}")
    return vectors


def _filter(spec: dict[str, Any] | None):
    try:
        return parse_filter(spec)
    except FilterError as exc:
        raise Invalid(str(exc)) from None


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
    deployment = session.get(Model, gallery.model_id).deployment
    number = None if deployment is None else deployment.number
    if number != gallery.model_version:
        raise OtherVersion(f"gallery {gallery.name!r} holds embeddings of model "
                           f"{gallery.model_id} deployment {gallery.model_version}; the model "
                           f"now serves deployment {number}, whose embeddings are not "
                           "comparable: create a gallery for it and add the items again")
    return deployment.name if deployment is not None and deployment.serving else None


@lru_cache(maxsize=1)
def embed_client() -> TorchServe:
    """The process's client of TorchServe's embeddings (one connection pool and thread
    pool, shared by its requests or its import jobs)."""
    return model_server.client()


def _next_seq(session: Session, gallery_id: int) -> int:
    return session.execute(update(Gallery).where(Gallery.id == gallery_id)
                           .values(seq=Gallery.seq + 1).returning(Gallery.seq)).scalar_one()


def upsert(session: Session, gallery_id: int, items: list[dict], vectors: np.ndarray) -> int:
    """Insert the items (as added: id, metadata, image or vector) with their vectors, or
    replace those with the same ids (in this transaction; the caller commits). Returns the
    write's seq."""
    seq = _next_seq(session, gallery_id)
    vectors = np.ascontiguousarray(vectors, np.float32)
    rows = {item["id"]: {"gallery_id": gallery_id, "item_id": item["id"],
                         "metadata": item["metadata"], "vector": vector.tobytes(),
                         "thumbnail": thumbnail(item.get("image")), "seq": seq,
                         "updated_at": utcnow()}
            for item, vector in zip(items, vectors)}  # a repeated id: the last
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    insert = dialect.insert(GalleryItem.__table__)
    session.execute(insert.on_conflict_do_update(
        index_elements=["gallery_id", "item_id"],
        set_={c: insert.excluded[c] for c in ("metadata", "vector", "thumbnail", "seq",
                                               "updated_at")}),
        list(rows.values()))
    return seq


def thumbnail(image: str | None) -> bytes | None:
    """A PNG of an image item (base64, already embedded) at most THUMBNAIL px a side, for
    pages that list a gallery; None for a vector item, or an image this process cannot
    draw (the model read it: the item is kept, without a picture)."""
    if image is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(base64.b64decode(image))) as picture:
            picture.thumbnail((THUMBNAIL, THUMBNAIL))
            out = io.BytesIO()
            picture.convert("L" if picture.mode == "L" else "RGB").save(out, "PNG")
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return out.getvalue()


def delete(session: Session, gallery_id: int, ids: list[str]) -> int:
    """Turn the items into tombstones (in this transaction); returns how many existed."""
    seq = _next_seq(session, gallery_id)
    return session.execute(update(GalleryItem).where(
        GalleryItem.gallery_id == gallery_id, GalleryItem.item_id.in_(ids),
        GalleryItem.vector.is_not(None)).values(
        vector=None, meta=None, thumbnail=None, seq=seq, updated_at=utcnow())).rowcount


def item(session: Session, gallery_id: int, item_id: str) -> GalleryItem | None:
    found = session.scalar(select(GalleryItem).where(GalleryItem.gallery_id == gallery_id,
                                                     GalleryItem.item_id == item_id))
    return found if found is not None and found.vector is not None else None


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
