"""/v1/galleries: apps' own collections of embedded items, bound to a deployed model's
version: add (images or vectors, by the app's ids, with metadata; an existing id is
replaced), get, delete (by id or metadata filter), and search (by image, vector or item)
with a metadata filter. Small adds answer at once; large ones run as a job."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import galleries as cache
from api.deps import EmbedKey, SessionDep
from api.rate_limit import limiter
from api.schemas import (
    GalleryCreate,
    GalleryDelete,
    GalleryDeleted,
    GalleryItemIn,
    GalleryItemsIn,
    GallerySearch,
    errors,
    public,
)
from mec_client.models import (
    SYNC_IMAGES,
    GalleriesPublic,
    GalleryAdded,
    GalleryItemPublic,
    GalleryPublic,
    GallerySearchPublic,
    JobPublic,
)
from mec_platform import galleries, jobs, keys
from mec_platform.db import session_scope
from mec_platform.galleries import NAME_PATTERN
from mec_platform.jobs import JobKind, JobStatus
from mec_platform.queue import Queue
from mec_platform.settings import get_settings
from mec_platform.specs import ID_MAX
from mec_platform.tables import Gallery, GalleryItem, Job, Model
from serving.client import Unavailable
from serving.vector_index import FilterError, parse_filter

router = APIRouter(prefix="/v1/galleries", tags=["galleries"],
                   responses=errors(400, 401, 403, 404, 409, 422))
Name = Annotated[str, PathParam(pattern=NAME_PATTERN)]
NDJSON = "application/x-ndjson"


def _public(session: Session, gallery: Gallery) -> GalleryPublic:
    count = session.scalar(select(func.count()).where(GalleryItem.gallery_id == gallery.id,
                                                      GalleryItem.vector.is_not(None)))
    return GalleryPublic(name=gallery.name, model_id=gallery.model_id,
                         model_version=gallery.model_version, dim=gallery.dim, items=count,
                         created_at=gallery.created_at)


def _gallery(session: Session, key, name: str) -> Gallery:
    gallery = galleries.find(session, key.project, name)
    if gallery is None:
        raise HTTPException(404, f"gallery {name!r} not found")
    return gallery


def _endpoint(session: Session, gallery: Gallery) -> str | None:
    """galleries.endpoint, with another version than the gallery's as a 409."""
    try:
        return galleries.endpoint(session, gallery)
    except galleries.OtherVersion as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("", response_model=GalleryPublic, status_code=201)
def create_gallery(key: EmbedKey, session: SessionDep, body: GalleryCreate):
    """A new, empty gallery, bound to the model's serving version."""
    model = session.get(Model, body.model_id)
    if model is None or not keys.sees(key, model.project):
        raise HTTPException(404, f"model_id: model {body.model_id} not found")
    deployment = model.deployment or {}
    if deployment.get("status") != "serving" or "dim" not in deployment:
        raise HTTPException(409, f"model_id: model {model.id} is not deployed (or was "
                                 f"deployed before galleries existed); deploy it first")
    gallery = Gallery(project=key.project, name=body.name, model_id=model.id,
                      model_version=deployment["number"], dim=deployment["dim"], seq=0)
    session.add(gallery)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(409, f"name: a gallery {body.name!r} exists") from None
    return _public(session, gallery)


@router.get("", response_model=GalleriesPublic)
def list_galleries(key: EmbedKey, session: SessionDep):
    """The key's project's galleries (an admin key: every project's)."""
    query = select(Gallery) if keys.sees_all(key) else \
        select(Gallery).where(Gallery.project == key.project)
    rows = session.scalars(query.order_by(Gallery.project, Gallery.name))
    return GalleriesPublic(data=[_public(session, g) for g in rows])


@router.get("/{name}", response_model=GalleryPublic)
def get_gallery(key: EmbedKey, session: SessionDep, name: Name):
    return _public(session, _gallery(session, key, name))


@router.delete("/{name}", status_code=204)
def delete_gallery(key: EmbedKey, session: SessionDep, name: Name):
    """The gallery and all its items."""
    gallery = _gallery(session, key, name)
    session.execute(delete(GalleryItem).where(GalleryItem.gallery_id == gallery.id))
    session.delete(gallery)
    session.commit()
    cache.forget(gallery.id)
    return Response(status_code=204)


@router.post("/{name}/items", response_model=GalleryAdded, openapi_extra={"requestBody": {
    "required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/GalleryItemsIn"}},
        NDJSON: {"schema": {"type": "string", "description": "One item (as in the JSON "
                            "body's items) per line."}}}}}, responses={
    202: {"model": JobPublic, "description": "A large add, running as this job."},
    413: {"description": "Body over the upload limit."},
    429: {"description": "Too many imports from the key, or queued in the project."}})
async def add_items(key: EmbedKey, name: Name, request: Request):
    """Add or replace items: JSON `{"items": [{"id", "metadata", "image" | "vector"}]}`.
    Up to 64 images (and any number of vectors, up to 10,000 items) are embedded and
    written before the answer; more, or a body of `application/x-ndjson` (one item per
    line, any number), are staged and written by a job (202), which can be followed and
    resumes after a crash. All of a body's items are checked before anything is written."""
    ndjson = request.headers.get("content-type", "").startswith(NDJSON)
    if ndjson:  # an import: counted against the key's rate even for a gallery not found
        await run_in_threadpool(_import_quota, key)
    await run_in_threadpool(_exists, key, name)  # before the body is read
    if ndjson:
        staged, count = await _stage_lines(request)
        return await run_in_threadpool(_submit_import, key, name, staged, count)
    try:
        body = GalleryItemsIn.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    items = [item.model_dump() for item in body.items]
    if sum(item["image"] is not None for item in items) > SYNC_IMAGES:
        await run_in_threadpool(_import_quota, key)
        staged = _staging_path()
        _write_atomically(staged, "".join(json.dumps(i) + "\n" for i in items))
        return await run_in_threadpool(_submit_import, key, name, staged, len(items))
    return await run_in_threadpool(_add_now, key, name, items)


def _exists(key, name: str) -> None:
    with session_scope() as session:
        _gallery(session, key, name)


def _import_quota(key) -> None:
    """Imports share the cpu queue with deploys: a key may submit them at the rate of job
    submissions, and a project may have at most MEC_MAX_QUEUED_IMPORTS waiting (429)."""
    wait = limiter().acquire(f"import:{key.id}")
    if wait > 0:
        raise HTTPException(429, f"too many imports for key {key.prefix}...; retry in "
                                 f"{wait:.0f} s", headers={"Retry-After": str(int(wait) + 1)})
    most = get_settings().max_queued_imports
    with session_scope() as session:
        queued = session.scalar(select(func.count()).select_from(Job).where(
            Job.project == key.project, Job.kind == JobKind.GALLERY,
            Job.status == JobStatus.QUEUED))
    if queued >= most:
        raise HTTPException(429, f"project {key.project!r} has {queued} imports queued, the "
                                 f"most it may (MEC_MAX_QUEUED_IMPORTS); retry when some have "
                                 "run", headers={"Retry-After": "30"})


def _add_now(key, name: str, items: list[dict]) -> GalleryAdded:
    with session_scope() as session:
        gallery = _gallery(session, key, name)
        endpoint = _endpoint(session, gallery)
        dim, gallery_id = gallery.dim, gallery.id
        session.rollback()  # no transaction held while the model embeds
        try:
            kept, vectors, bad = galleries.vectors_of(items, dim, galleries.embed_client(),
                                                      endpoint)
        except Unavailable as exc:
            raise HTTPException(502, str(exc)) from None
        if bad:
            first = min(bad)
            status = 400 if bad[first].startswith("image") else 422
            raise HTTPException(status, "; ".join(f"items[{p}].{bad[p]}" for p in sorted(bad)))
        _endpoint(session, gallery)  # still the same version after embedding
        seq = galleries.upsert(session, gallery_id, [items[p]["id"] for p in kept], vectors,
                               [items[p]["metadata"] for p in kept])
        session.commit()
    return GalleryAdded(added=len(kept), seq=seq)


def _submit_import(key, name: str, staged: Path, count: int):
    with session_scope() as session:
        try:
            gallery = _gallery(session, key, name)
            _endpoint(session, gallery)
        except HTTPException:
            staged.unlink()  # nothing will read it
            raise
        job = jobs.submit(session, JobKind.GALLERY, {
            **galleries.identity(gallery), "items": str(staged), "count": count}, Queue.CPU,
            f"add {count} items to gallery {gallery.name}", project=key.project)
        return Response(public(job).model_dump_json(), status_code=202,
                        media_type="application/json")


def _staging_path() -> Path:
    folder = galleries.staging_folder(get_settings().artifact_root)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{uuid.uuid4().hex}.ndjson"


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)


LINE_BYTES = 16 * 2**20  # an NDJSON item: a 10 MiB image, base64, with its metadata


async def _stage_lines(request: Request) -> tuple[Path, int]:
    """Stream NDJSON items to a staging file, each line checked as it comes (422 naming
    the line's item: items[N]...); the body's size is bounded as it streams
    (api.limits)."""
    path = _staging_path()
    partial = path.with_suffix(".partial")
    count, rest = 0, b""
    try:
        with partial.open("w") as out:
            async for chunk in request.stream():
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    count += _stage_line(out, line, count)
                if len(rest) > LINE_BYTES:  # one item's line is held whole: bound it
                    raise HTTPException(413, f"items[{count}]: a line over {LINE_BYTES} bytes")
            count += _stage_line(out, rest, count)
        if count == 0:
            raise HTTPException(422, "items: no item in the body")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path, count


def _stage_line(out, line: bytes, position: int) -> int:
    if not line.strip():
        return 0
    try:
        item = GalleryItemIn.model_validate_json(line)
    except ValidationError as exc:
        raise RequestValidationError([e | {"loc": ("items", position, *e["loc"])}
                                      for e in exc.errors()]) from None
    out.write(item.model_dump_json() + "\n")
    return 1


@router.get("/{name}/imports/{job_id}", response_model=JobPublic)
def get_import(key: EmbedKey, session: SessionDep, name: Name,
               job_id: Annotated[int, PathParam(ge=1, le=ID_MAX)]):
    """A large add's job, for following it with the app's key: its progress (items done
    of all), counts, and the items that failed."""
    gallery = _gallery(session, key, name)
    job = session.get(Job, job_id)
    if job is None or job.kind != JobKind.GALLERY or not galleries.is_bound(gallery, job.config):
        raise HTTPException(404, f"job_id: no import {job_id} into gallery {name!r}")
    return public(job)


@router.get("/{name}/items/{item_id:path}", response_model=GalleryItemPublic)
def get_item(key: EmbedKey, session: SessionDep, name: Name, item_id: str):
    gallery = _gallery(session, key, name)
    found = galleries.item(session, gallery.id, item_id)
    if found is None:
        raise HTTPException(404, f"item_id: no item {item_id!r} in gallery {name!r}")
    return GalleryItemPublic(id=found.item_id, metadata=found.meta,
                             vector=_floats(found.vector))


@router.delete("/{name}/items/{item_id:path}", status_code=204)
def delete_item(key: EmbedKey, session: SessionDep, name: Name, item_id: str):
    gallery = _gallery(session, key, name)
    deleted = galleries.delete(session, gallery.id, [item_id])
    session.commit()
    if not deleted:
        raise HTTPException(404, f"item_id: no item {item_id!r} in gallery {name!r}")
    return Response(status_code=204)


@router.post("/{name}/delete", response_model=GalleryDeleted)
def delete_items(key: EmbedKey, session: SessionDep, name: Name, body: GalleryDelete):
    """Delete items by ids, every item that a metadata filter keeps, or every item
    (`"all": true`)."""
    gallery = _gallery(session, key, name)
    ids = body.ids
    if ids is None:  # a filter, or every item ("all": true: no condition)
        allowed = _filter(body.filter)
        with cache.current(session, gallery) as index:
            ids = index.matching(allowed)
    deleted = galleries.delete(session, gallery.id, ids) if ids else 0
    session.commit()
    return GalleryDeleted(deleted=deleted)


@router.post("/{name}/search", response_model=GallerySearchPublic)
def search(key: EmbedKey, session: SessionDep, name: Name, body: GallerySearch):
    """The k items nearest to an image, a vector or one of the gallery's items (cosine
    similarity), among those that the filter keeps; exact up to 200,000 candidates, an
    inverted-file index above."""
    gallery = _gallery(session, key, name)
    endpoint = _endpoint(session, gallery)
    allowed = _filter(body.filter)
    query = None
    if body.image is not None:
        query = _embedded(body.image, endpoint)
    elif body.vector is not None:
        if not any(body.vector):
            raise HTTPException(422, "vector: all zeros")
        _, query, bad = galleries.vectors_of([{"vector": body.vector}], gallery.dim, None,
                                             None)  # as an added vector: checked, normalised
        if bad:
            raise HTTPException(422, bad[0])
    with cache.current(session, gallery) as index:
        if body.item_id is not None:
            found = index.get(body.item_id)
            if found is None:
                raise HTTPException(404, f"item_id: no item {body.item_id!r} in gallery "
                                         f"{name!r}")
            query = found[0]
        results = index.search(query, body.k, allowed, exclude=body.item_id)[0]
    return GallerySearchPublic(results=results, model_version=gallery.model_version)


def _embedded(image: str, endpoint: str | None):
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, "image: not base64") from None
    if endpoint is None:
        raise HTTPException(409, "image: the gallery's model is not deployed, so images "
                                 "cannot be embedded; search by vector or item_id")
    try:
        vectors, bad = galleries.embed_client().embed(endpoint, [data])
    except Unavailable as exc:
        raise HTTPException(502, str(exc)) from None
    if bad:
        raise HTTPException(400, f"image: {bad[0]}")
    return vectors


def _filter(spec):
    try:
        return parse_filter(spec)
    except FilterError as exc:
        raise HTTPException(422, str(exc)) from None


def _floats(vector: bytes) -> list[float]:
    return np.frombuffer(vector, np.float32).tolist()
