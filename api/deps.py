"""Shared route dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException
from sqlalchemy.orm import Session

from api.db import get_session
from api.models import Job, Model

SessionDep = Annotated[Session, Depends(get_session)]


def job_or_404(job_id: int, session: SessionDep) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return job


def model_or_404(model_id: int, session: SessionDep) -> Model:
    model = session.get(Model, model_id)
    if model is None:
        raise HTTPException(404, f"model {model_id} not found")
    return model


JobDep = Annotated[Job, Depends(job_or_404)]
ModelDep = Annotated[Model, Depends(model_or_404)]
