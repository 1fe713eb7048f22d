"""/v1/models: finished encoders, their artifacts and evaluation results."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query
from sqlalchemy import func, select

from api.deps import ModelDep, SessionDep, current_key
from api.jobs import public
from api.models import Job, Model, utcnow
from api.schemas import DeploySpec, JobPublic, ModelPublic, ModelsPublic
from worker.queue import enqueue

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(current_key)])


@router.get("", response_model=ModelsPublic)
def list_models(session: SessionDep, limit: int = Query(50, ge=1, le=500),
                offset: int = Query(0, ge=0)):
    """Finished encoders, newest first."""
    count = session.scalar(select(func.count(Model.id)))
    rows = session.scalars(select(Model).order_by(Model.id.desc()).limit(limit).offset(offset))
    return ModelsPublic(data=list(rows), count=count)


@router.get("/{model_id}", response_model=ModelPublic)
def get_model(model: ModelDep):
    """One encoder with its artifacts and evaluations."""
    return model


def _deploy_job(session, model: Model, action: str, spec: DeploySpec) -> JobPublic:
    job = Job(kind="deploy", name=f"{action} model {model.id}", tags=[], priority=5,
              queue="cpu", config={"model_id": model.id, "action": action,
                                   **spec.model_dump(mode="json")}, enqueued_at=utcnow())
    session.add(job)
    session.commit()
    enqueue(job.id, "deploy", "cpu", 5)
    return public(job)


@router.post("/{model_id}/deploy", response_model=JobPublic, status_code=202)
def deploy_model(model: ModelDep, session: SessionDep,
                 spec: Annotated[DeploySpec | None, Body()] = None):
    """Package (if needed) and register the model with TorchServe, as a new version that
    replaces the serving one only once it is ready. Returns the deploy job."""
    return _deploy_job(session, model, "deploy", spec or DeploySpec())


@router.post("/{model_id}/undeploy", response_model=JobPublic, status_code=202)
def undeploy_model(model: ModelDep, session: SessionDep):
    """Unregister every version of the model from TorchServe. Returns the undeploy job."""
    return _deploy_job(session, model, "undeploy", DeploySpec())
