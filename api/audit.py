"""The audit log: every state-changing request under /v1, written after its response,
with the caller's key prefix and project (when the key was known), the route, the status
and the client's address."""

from __future__ import annotations

import logging

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


class AuditLog:
    """ASGI middleware: once a state-changing request under /v1 has been answered (or has
    failed: status 500), log it. Plain ASGI, so that other requests pay nothing for it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in CHANGES \
                or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def answer(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, answer)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route not in QUERIES:
                await _record(scope, route, status)


async def _record(scope, route: str | None, status: int) -> None:
    prefix, project = scope.get("state", {}).get("caller", (None, None))
    entry = AuditEntry(key_prefix=prefix, project=project, path=scope["path"][:2000],
                       action=f"{scope['method']} {route or scope['path']}"[:200],
                       status=status, address=(scope.get("client") or (None,))[0])
    try:
        await run_in_threadpool(_write, entry)
    except Exception:  # the request itself is done; the failure is logged, not hidden
        log.exception("audit log: could not record %s %s", scope["method"], scope["path"])
