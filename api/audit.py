"""The audit log: every state-changing request under /v1, written after its response,
with the caller's key prefix and project (when the key was known), the route, the status
and the client's address."""

from __future__ import annotations

import logging

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from mec_platform.db import session_scope
from mec_platform.tables import AuditEntry

log = logging.getLogger(__name__)
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
QUERIES = frozenset({"/v1/models/{model_id}/embed",  # POSTs that change nothing
                     "/v1/models/{model_id}/search"})


def _write(entry: AuditEntry) -> None:
    with session_scope() as session:
        session.add(entry)


async def record(request: Request, call_next):
    """HTTP middleware: pass the request on, then log it if it could change state."""
    response = await call_next(request)
    route = request.scope.get("route")
    if request.method in CHANGES and request.url.path.startswith("/v1/") and \
            getattr(route, "path", None) not in QUERIES:
        prefix, project = getattr(request.state, "caller", (None, None))
        entry = AuditEntry(
            key_prefix=prefix, project=project, path=request.url.path[:2000],
            action=f"{request.method} {getattr(route, 'path', request.url.path)}"[:200],
            status=response.status_code,
            address=request.client.host if request.client else None)
        try:
            await run_in_threadpool(_write, entry)
        except Exception:  # the request itself is done; the failure is logged, not hidden
            log.exception("audit log: could not record %s %s", request.method,
                          request.url.path)
    return response
