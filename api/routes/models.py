"""/v1/models: finished encoders, their artifacts and evaluation results."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from api.deps import ModelDep, SessionDep
from api.models import Model
from api.schemas import ModelPublic, ModelsPublic

router = APIRouter(prefix="/v1/models", tags=["models"])


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
