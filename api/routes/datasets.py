"""/v1/datasets: a project's datasets and their versions, uploaded as image archives and
named in jobs by dataset://NAME[/VERSION] (mec_platform.datasets)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import ReadKey, SessionDep, WriteKey
from api.schemas import PRINTABLE, as_json_types, errors
from mec_client.models import DatasetPublic, DatasetsPublic, DatasetVersionPublic
from mec_platform import datasets, storage, uploads
from mec_platform.db import session_scope
from mec_platform.galleries import NAME_PATTERN
from mec_platform.tables import ApiKey, Dataset, DatasetVersion

router = APIRouter(prefix="/v1/datasets", tags=["datasets"],
                   responses=errors(400, 401, 403, 422))
NO_DATASET = {404: "No such dataset in the key's project."}
Name = Annotated[str, PathParam(pattern=NAME_PATTERN, description="The dataset's name.")]
ARCHIVES = ("application/x-tar", "application/gzip", "application/x-gzip", "application/zip",
            "application/octet-stream")


class DatasetSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # the bucket as S3 names them (3-63 of a-z, 0-9, '.', '-'), then the prefix
    source: str = Field(pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\\\x00-\x1f]*)?$",
                        max_length=1000, description=(
        "An S3 prefix of images (class folders, as in an archive), read in place on the "
        "platform's S3 server (MEC_S3_ENDPOINT_URL, its credentials): s3://BUCKET/PREFIX, "
        "no '.' or '..' in the prefix, not within the platform's own store."))

    @field_validator("source")
    @classmethod
    def _no_dot_segments(cls, source: str) -> str:
        # S3 keys have no such parts (SeaweedFS lists nothing under them and refuses them
        # in a key); a server that maps keys to files might resolve them: refused by name
        if {".", ".."} & set(source.removeprefix("s3://").split("/")[1:]):
            raise ValueError("'.' and '..' are not parts of an S3 prefix")
        return source


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Letters, digits, '_', '.', '-'; "
                      "up to 100 characters.")
    description: str = Field("", max_length=2000, pattern=PRINTABLE)


def _view(session, dataset: Dataset) -> DatasetPublic:
    rows = session.scalars(select(DatasetVersion).where(
        DatasetVersion.dataset_id == dataset.id).order_by(DatasetVersion.number)).all()
    return DatasetPublic(name=dataset.name, description=dataset.description,
                         created_at=dataset.created_at,
                         latest=rows[-1].number if rows else None,
                         versions=[_version(dataset, v) for v in rows])


def _version(dataset: Dataset, version: DatasetVersion) -> DatasetVersionPublic:
    return DatasetVersionPublic(
        uri=f"{datasets.SCHEME}{dataset.name}/{version.number}",
        **{f: getattr(version, f) for f in DatasetVersionPublic.model_fields if f != "uri"})


def _find(session, key: ApiKey, name: str) -> Dataset:
    return _dataset(session, key.project, name)


@router.post("", response_model=DatasetPublic, status_code=201, responses=errors(
    {409: "A dataset of this name exists in the key's project."}))
def create_dataset(key: WriteKey, session: SessionDep, body: as_json_types(DatasetCreate)):
    """A new, empty dataset of the key's project; its content comes as versions."""
    if session.scalar(select(Dataset).where(Dataset.project == key.project,
                                            Dataset.name == body.name)):
        raise HTTPException(409, f"name: dataset {body.name!r} already exists")
    dataset = Dataset(project=key.project, name=body.name, description=body.description)
    session.add(dataset)
    session.commit()
    return _view(session, dataset)


@router.get("", response_model=DatasetsPublic)
def list_datasets(key: ReadKey, session: SessionDep):
    """The key's project's datasets, by name."""
    rows = session.scalars(select(Dataset).where(Dataset.project == key.project)
                           .order_by(Dataset.name))
    return DatasetsPublic(data=[_view(session, d) for d in rows])


@router.get("/{name}", response_model=DatasetPublic, responses=errors(NO_DATASET))
def get_dataset(key: ReadKey, session: SessionDep, name: Name):
    return _view(session, _find(session, key, name))


@router.delete("/{name}", status_code=204, responses=errors(NO_DATASET))
def delete_dataset(key: WriteKey, session: SessionDep, name: Name):
    """The dataset, its versions and their stored files. Jobs that name it and have not
    yet started fail with the reason when a worker claims them."""
    dataset = _find(session, key, name)
    ident = dataset.id
    session.delete(dataset)
    session.commit()
    storage.get_store().delete_prefix(f"datasets/{ident}")
    return Response(status_code=204)


@router.post("/{name}/versions", response_model=DatasetVersionPublic, status_code=201,
             responses=errors(NO_DATASET, 413, 415, {
                 409: "Another upload to the dataset took the version number while this one "
                      "was checked; send it again.",
                 502: "source: the object store cannot be read now."}),
             openapi_extra={"requestBody": {
                 "required": True, "content": {
                     **{t: {"schema": {"type": "string", "format": "binary"}}
                        for t in ARCHIVES},
                     "application/json": {"schema": DatasetSource.model_json_schema()}}}})
async def upload_version(key: WriteKey, request: Request, name: Name,
                         test_fraction: float = Query(0.1, ge=0, le=0.9, description=(
                             "Of each class, the part held out as test images (seeded); "
                             "unused when the archive has its own train/ and test/ "
                             "folders.")),
                         seed: int = Query(0, ge=0, le=2**31 - 1)):
    """A new version from a .tar, .tar.gz or .zip of images: class folders (CLASS/IMAGE),
    with or without train/ and test/ (or val/) above them, or images alone (no labels).
    The body is streamed to disk, checked whole, then kept in the store; a bad archive is
    refused (422) with its bad members listed, and nothing of it is kept. Sending the
    same archive again answers its existing version. Or, with a JSON body
    `{"source": "s3://bucket/prefix"}`, a version read in place from an S3 prefix of the
    same layout (its objects' names checked now, their contents pinned by ETag)."""
    await run_in_threadpool(_exists, key.project, name)  # 404 before the body is read
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type == "application/json":
        try:
            body = DatasetSource.model_validate_json(await request.body(), strict=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "body"
            raise HTTPException(422, f"{field}: {first['msg']}") from None
        return await run_in_threadpool(_add_source, key.project, name, body.source,
                                       test_fraction, seed)
    if content_type not in ARCHIVES:
        raise HTTPException(415, f"body: send the archive as one of {', '.join(ARCHIVES)}, "
                                 f"not {content_type or 'no Content-Type'}")
    with uploads.staging() as folder:
        archive, digest = folder / "upload", hashlib.sha256()
        with archive.open("wb") as out:
            async for chunk in request.stream():
                digest.update(chunk)
                out.write(chunk)
        return await run_in_threadpool(_add, key.project, name, archive, digest.hexdigest(),
                                       test_fraction, seed)


def _exists(project: str, name: str) -> None:
    with session_scope() as session:
        _dataset(session, project, name)


def _add_source(project: str, name: str, source: str, test_fraction: float, seed: int
                ) -> DatasetVersionPublic:
    with session_scope() as session, uploads.staging() as folder:
        dataset = _dataset(session, project, name)
        try:
            version = datasets.add_source_version(session, dataset, source, test_fraction,
                                                  seed, folder)
        except datasets.ArchiveRefused as exc:
            raise HTTPException(422, str(exc)) from None
        except storage.StorageError as exc:
            raise HTTPException(422, f"source: {exc}") from None
        session.flush()
        return _version(dataset, version)


def _dataset(session, project: str, name: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.project == project,
                                                   Dataset.name == name))
    if dataset is None:
        raise HTTPException(404, f"dataset {name!r} not found")
    return dataset


def _add(project: str, name: str, archive: Path, digest: str, test_fraction: float,
         seed: int) -> DatasetVersionPublic:
    with session_scope() as session:
        dataset = _dataset(session, project, name)
        try:
            version = datasets.add_version(session, dataset, archive, digest,
                                           f"upload of {archive.stat().st_size} bytes",
                                           test_fraction, seed)
        except datasets.ArchiveRefused as exc:
            raise HTTPException(422, f"body: {exc}") from None
        session.flush()
        return _version(dataset, version)

