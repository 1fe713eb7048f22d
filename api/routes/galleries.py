"""/v1/galleries: apps' own collections of embedded items, bound to a deployed model's
version: add (images or vectors, by the app's ids, with metadata; an existing id is
replaced), get, delete (by id or metadata filter), and search (by image, vector or item)
with a metadata filter. Small adds answer at once; large ones run as a job. The work is
mec_platform.galleries'; here, HTTP."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.deps import EmbedKey, SessionDep
from api.rate_limit import limiter
from api.schemas import (
    GalleryCreate,
    GalleryDelete,
    GalleryDeleted,
    GalleryItemIn,
    GalleryItemsIn,
    GallerySearch,
    ItemId,
    as_json_types,
    errors,
    public,
)
from mec_client.enums import SYNC_IMAGES
from mec_client.models import (
    GalleriesPublic,
    GalleryAdded,
    GalleryItemListed,
    GalleryItemPublic,
    GalleryItemsPublic,
    GalleryPublic,
    GallerySearchPublic,
    JobPublic,
)
from mec_platform import galleries, jobs, uploads
from mec_platform.db import session_scope
from mec_platform.galleries import NAME_PATTERN
from mec_platform.specs import ID_MAX
from mec_platform.tables import Gallery, Job

router = APIRouter(prefix="/v1/galleries", tags=["galleries"], responses=errors(
    {400: "An image could not be read.",
     404: "No gallery of this name in the key's project, or no such item or import.",
     409: "A gallery of this name exists, or its model is not deployed, or now serves "
          "another deployment than the gallery's vectors come from.",
     502: "The model server failed or is unreachable."}, 401, 403, 422))
Name = Annotated[str, PathParam(pattern=NAME_PATTERN)]
NDJSON = "application/x-ndjson"


def _public(session: Session, gallery: Gallery) -> GalleryPublic:
    return GalleryPublic(name=gallery.name, model_id=gallery.model_id,
                         model_version=gallery.model_version, dim=gallery.dim,
                         items=galleries.size(session, gallery), created_at=gallery.created_at)


@router.post("", response_model=GalleryPublic, status_code=201)
def create_gallery(key: EmbedKey, session: SessionDep, body: as_json_types(GalleryCreate)):
    """A new, empty gallery, bound to the model's serving version."""
    return _public(session, galleries.create(session, key, body.name, body.model_id))


@router.get("", response_model=GalleriesPublic)
def list_galleries(key: EmbedKey, session: SessionDep):
    """The key's project's galleries (an admin key: every project's)."""
    return GalleriesPublic(data=[_public(session, g) for g in galleries.visible(session, key)])


@router.get("/{name}", response_model=GalleryPublic)
def get_gallery(key: EmbedKey, session: SessionDep, name: Name):
    return _public(session, galleries.get(session, key, name))


@router.delete("/{name}", status_code=204)
def delete_gallery(key: EmbedKey, session: SessionDep, name: Name):
    """The gallery and all its items."""
    galleries.remove(session, key, name)
    return Response(status_code=204)


def _in_session(service: Callable, *args):
    """A service call with a session of its own (for the routes that read their body
    themselves, off the event loop)."""
    with session_scope() as session:
        return service(session, *args)


@router.post("/{name}/items", response_model=GalleryAdded, openapi_extra={"requestBody": {
    "required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/GalleryItemsIn"}},
        NDJSON: {"schema": {"type": "string", "description": "One item (as in the JSON "
                            "body's items) per line."}}}}}, responses={
    202: {"model": JobPublic, "description": "A large add, running as this job."},
    **errors(413, {429: "Too many imports from the key, or queued in the project."})})
async def add_items(key: EmbedKey, name: Name, request: Request):
    """Add or replace items: JSON `{"items": [{"id", "metadata", "image" | "vector"}]}`.
    Up to 64 images (and any number of vectors, up to 10,000 items) are embedded and
    written before the answer; more, or a body of `application/x-ndjson` (one item per
    line, any number), are staged and written by a job (202), which can be followed and
    resumes after a crash. All of a body's items are checked before anything is written."""
    ndjson = request.headers.get("content-type", "").startswith(NDJSON)
    if ndjson:  # an import: counted against the key's rate even for a gallery not found
        await run_in_threadpool(_import_quota, key)
    await run_in_threadpool(_in_session, galleries.get, key, name)  # before the body is read
    if ndjson:
        with uploads.staging() as folder:
            count = await _stage_lines(request, folder / "items.ndjson")
            return await run_in_threadpool(_submit_import, key, name,
                                           folder / "items.ndjson", count)
    try:
        body = GalleryItemsIn.model_validate_json(await request.body(), strict=True)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    items = [item.model_dump() for item in body.items]
    if sum(item["image"] is not None for item in items) > SYNC_IMAGES:
        await run_in_threadpool(_import_quota, key)
        with uploads.staging() as folder:
            staged = await run_in_threadpool(galleries.stage, items, folder / "items.ndjson")
            return await run_in_threadpool(_submit_import, key, name, staged, len(items))
    added, seq = await run_in_threadpool(_in_session, galleries.add, key, name, items)
    return GalleryAdded(added=added, seq=seq)


def _import_quota(key) -> None:
    """Imports share the cpu queue with deploys: a key may submit them at the rate of job
    submissions, and a project may have at most MEC_MAX_QUEUED_IMPORTS waiting (429)."""
    wait = limiter().acquire(f"import:{key.id}")
    if wait > 0:
        raise HTTPException(429, f"too many imports for key {key.prefix}...; retry in "
                                 f"{wait:.0f} s", headers={"Retry-After": str(int(wait) + 1)})
    _in_session(galleries.check_import_room, key.project)


def _submit_import(key, name: str, staged: Path, count: int) -> Response:
    job = _in_session(galleries.submit_import, key, name, staged, count)
    return Response(_import_public(job).model_dump_json(), status_code=202,
                    media_type="application/json")


def _import_public(job: Job) -> JobPublic:
    """An import job as an app's key sees it: without the store path of its staged items
    (where the server keeps files is not the app's to know)."""
    seen = public(job)
    return seen.model_copy(update={"config": {k: v for k, v in (seen.config or {}).items()
                                              if k != "items"}})


LINE_BYTES = 16 * 2**20  # an NDJSON item: a 10 MiB image, base64, with its metadata


async def _stage_lines(request: Request, path: Path) -> int:
    """Stream NDJSON items to `path` (in an upload's staging folder), each line checked as
    it comes (422 naming the line's item: items[N]...); the body's size is bounded as it
    streams (api.limits). Returns the number of items."""
    count, rest = 0, b""
    with path.open("w") as out:
        async for chunk in request.stream():
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                count += _stage_line(out, line, count)
            if len(rest) > LINE_BYTES:  # one item's line is held whole: bound it
                raise HTTPException(413, f"items[{count}]: a line over {LINE_BYTES} bytes")
        count += _stage_line(out, rest, count)
    if count == 0:
        raise HTTPException(422, "items: no item in the body")
    return count


def _stage_line(out, line: bytes, position: int) -> int:
    if not line.strip():
        return 0
    try:
        item = GalleryItemIn.model_validate_json(line, strict=True)
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
    return _import_public(galleries.import_of(session, key, name, job_id))


@router.post("/{name}/imports/{job_id}/cancel", response_model=JobPublic,
             responses={409: {"description": "The import has already finished."}})
def cancel_import(key: EmbedKey, session: SessionDep, name: Name,
                  job_id: Annotated[int, PathParam(ge=1, le=ID_MAX)]):
    """Cancel an import with the app's key: a queued one at once, a running one after the
    chunk it is writing (the items written so far stay in the gallery)."""
    job = galleries.import_of(session, key, name, job_id)
    jobs.cancel_job(session, job)
    return _import_public(job)


@router.get("/{name}/items", response_model=GalleryItemsPublic)
def list_items(key: EmbedKey, session: SessionDep, name: Name,
               # at most 20: the URL stays within what the HTTP server reads (80 KB)
               ids: Annotated[list[ItemId] | None, Query(alias="id", max_length=20)] = None,
               offset: Annotated[int, Query(ge=0, le=ID_MAX)] = 0,
               limit: Annotated[int, Query(ge=1, le=500)] = 50):
    """The gallery's items in the order they were added (or those of the `id`s given),
    with a thumbnail of each image item: what a page that shows a gallery needs."""
    rows, count = galleries.listed(session, key, name, ids, offset, limit)
    return GalleryItemsPublic(
        data=[GalleryItemListed(id=item_id, metadata=meta, thumbnail=base64.b64encode(png)
                                .decode() if png else None) for item_id, meta, png in rows],
        count=count)


@router.get("/{name}/items/{item_id:path}", response_model=GalleryItemPublic)
def get_item(key: EmbedKey, session: SessionDep, name: Name, item_id: str):
    found = galleries.get_item(session, key, name, item_id)
    return GalleryItemPublic(id=found.item_id, metadata=found.meta,
                             vector=np.frombuffer(found.vector, np.float32).tolist())


@router.delete("/{name}/items/{item_id:path}", status_code=204)
def delete_item(key: EmbedKey, session: SessionDep, name: Name, item_id: str):
    galleries.delete_item(session, key, name, item_id)
    return Response(status_code=204)


@router.post("/{name}/delete", response_model=GalleryDeleted)
def delete_items(key: EmbedKey, session: SessionDep, name: Name,
                 body: as_json_types(GalleryDelete)):
    """Delete items by ids, every item that a metadata filter keeps, or every item
    (`"all": true`)."""
    return GalleryDeleted(deleted=galleries.delete_items(session, key, name, body.ids,
                                                         body.filter))


@router.post("/{name}/search", response_model=GallerySearchPublic)
def search(key: EmbedKey, session: SessionDep, name: Name, body: as_json_types(GallerySearch)):
    """The k items nearest to an image, a vector or one of the gallery's items (cosine
    similarity), among those that the filter keeps; exact up to 200,000 candidates, an
    inverted-file index above."""
    hits, version = galleries.search(session, key, name, image=body.image, vector=body.vector,
                                     item_id=body.item_id, k=body.k, where=body.filter)
    return GallerySearchPublic(results=hits, model_version=version)
