"""/v1/models: finished encoders, their artifacts and evaluation results."""

from __future__ import annotations

import shutil
import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Form, Query, UploadFile
from sqlalchemy import func, select

from api.deps import DeployKey, ModelDep, ReadKey, SessionDep, WriteKey, submission_quota
from api.schemas import PRINTABLE, as_json_types, errors, model_public, public
from mec_client.models import JobPublic, ModelPublic, ModelsPublic
from mec_platform import deployments, jobs, keys, storage, uploads
from mec_platform.jobs import JobKind
from mec_platform.queue import Queue
from mec_platform.specs import ID_MAX, DeploySpec, UndeploySpec
from mec_platform.tables import Model

router = APIRouter(prefix="/v1/models", tags=["models"], responses=errors(400, 401, 403, 422))
NO_MODEL = {404: "No such model in the key's projects."}


@router.get("", response_model=ModelsPublic)
def list_models(key: ReadKey, session: SessionDep, limit: int = Query(50, ge=1, le=500),
                offset: int = Query(0, ge=0, le=ID_MAX)):
    """The key's project's finished encoders (an admin key: every project's), newest first."""
    query = select(Model)
    if not keys.sees_all(key):
        query = query.where(Model.project == key.project)
    count = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(Model.id.desc()).limit(limit).offset(offset))
    return ModelsPublic(data=[model_public(m) for m in rows], count=count)


@router.post("", response_model=JobPublic, status_code=202,
             dependencies=[Depends(submission_quota)], responses=errors(
                 {400: "The form could not be parsed."}, 413,
                 {429: "Too many submissions for this key; see Retry-After."}))
def upload_model(key: WriteKey, session: SessionDep, checkpoint: UploadFile,
                 name: Annotated[str, Form(min_length=1, max_length=200, pattern=PRINTABLE)]):
    """Upload a training checkpoint written by `mec train`; an import job loads it with
    weights_only (tensors and plain containers, never code), exports its encoder and adds
    it as a model. Returns the import job."""
    with uploads.staging() as folder:
        path = folder / "checkpoint.pt"
        with path.open("wb") as out:  # its size is bounded before it is read (api.limits)
            shutil.copyfileobj(checkpoint.file, out, 2**20)
        stored = storage.keep(path, f"uploads/{uuid.uuid4().hex}/checkpoint.pt", move=True)
    return public(jobs.submit(session, JobKind.IMPORT, {
        "checkpoint": stored, "filename": checkpoint.filename or ""}, Queue.CPU, name,
        project=key.project))


@router.get("/{model_id}", response_model=ModelPublic, responses=errors(NO_MODEL))
def get_model(_: ReadKey, model: ModelDep):
    """One encoder with its artifacts and evaluations."""
    return model_public(model)  # loads the evaluations while the session is open


@router.post("/{model_id}/deploy", response_model=JobPublic, status_code=202,
             responses=errors(NO_MODEL))
def deploy_model(_: DeployKey, model: ModelDep, session: SessionDep,
                 spec: Annotated[as_json_types(DeploySpec) | None, Body()] = None):
    """Package (if needed) and register the model with TorchServe, as a new version that
    replaces the serving one only once it is ready. Returns the deploy job."""
    return public(deployments.submit(session, model, "deploy", spec))


@router.post("/{model_id}/undeploy", response_model=JobPublic, status_code=202,
             responses=errors(NO_MODEL))
def undeploy_model(_: DeployKey, model: ModelDep, session: SessionDep,
                   _options: Annotated[UndeploySpec | None, Body()] = None):
    """Unregister every version of the model from TorchServe (no body, or {}). Returns the
    undeploy job."""
    return public(deployments.submit(session, model, "undeploy"))
