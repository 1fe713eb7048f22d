"""Health, readiness and live workers."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import text

from api.deps import ReadKey, SessionDep
from api.inference import management
from api.schemas import WorkerPublic, errors
from mec_platform import deployments, workers
from mec_platform.queue import broker_reachable
from serving.client import Unavailable

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The API process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses=errors(503))
def readyz(session: SessionDep) -> dict[str, str]:
    """The database and the broker are reachable, and TorchServe serves every model the
    database records as serving (after a restart, once they are registered again); 503
    naming what is not."""
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means not ready
        raise HTTPException(503, f"database unreachable: {type(exc).__name__}") from None
    if not broker_reachable():
        raise HTTPException(503, "broker unreachable")
    try:
        missing = deployments.unserved(session, management)
    except Unavailable as exc:
        raise HTTPException(503, f"models recorded as serving are not verified: {exc}"
                            ) from None
    if missing:
        raise HTTPException(503, "models recorded as serving are not registered in the model "
                            f"server yet: {', '.join(map(str, missing))}")
    return {"status": "ready"}


@router.get("/v1/workers", response_model=list[WorkerPublic], responses=errors(401, 403))
def list_workers(session: SessionDep, _: ReadKey):
    """Workers whose heartbeat is recent, with their device, the processes they can run
    for one job, and their current job."""
    return workers.live(session)
