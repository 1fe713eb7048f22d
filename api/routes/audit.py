"""/v1/audit: who changed what, for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from api.deps import AdminKey, SessionDep
from api.schemas import AuditPublic, IsoTime, errors
from mec_platform.specs import ID_MAX
from mec_platform.tables import AuditEntry

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=errors(401, 403, 422))


@router.get("", response_model=AuditPublic)
def list_audit(session: SessionDep, _: AdminKey,
               key_prefix: str | None = Query(None, max_length=16),
               project: str | None = Query(None, max_length=64),
               since: Annotated[IsoTime | None, Query(description="From this time on, in "
                                                      "ISO 8601.")] = None,
               limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=ID_MAX)):
    """State-changing requests, newest first: the caller's key prefix and project, the
    route, the status and the address (admin keys only)."""
    query = select(AuditEntry)
    if key_prefix:
        query = query.where(AuditEntry.key_prefix == key_prefix)
    if project:
        query = query.where(AuditEntry.project == project)
    if since:
        query = query.where(AuditEntry.at >= since)
    count = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit).offset(offset))
    return AuditPublic(data=list(rows), count=count)
