"""What the API answers before a route runs.

Limits before reading: a request with a body is refused by its Content-Length (413) and,
under /v1, without a known API key (401) before a byte of the body is read; a body
without a Content-Length is cut off at the route's limit while it streams. FastAPI parses a
body before it runs a route's dependencies, so these checks cannot live there. And OPTIONS
names every method of a path."""

from __future__ import annotations

import json
import re

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from api.deps import known_key, presented_key
from mec_platform.settings import get_settings
from serving.client import MAX_REQUEST_BYTES as INFERENCE_BYTES

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SMALL_BYTES = 2**20  # a job spec, a search, a login form


def limit(method: str, path: str, content_type: str) -> tuple[int, str]:
    """The largest body a request to `path` may send, and the setting that says so."""
    settings = get_settings()
    if method == "POST" and path == "/v1/models" or \
            re.fullmatch(r"/v1/galleries/[^/]+/items", path) and \
            content_type.startswith("application/x-ndjson"):
        return settings.max_upload_mb * 2**20, " (MEC_MAX_UPLOAD_MB)"  # streamed to disk
    if method == "POST" and re.fullmatch(r"/v1/datasets/[^/]+/versions", path) and \
            not content_type.startswith("application/json"):
        return settings.max_dataset_mb * 2**20, " (MEC_MAX_DATASET_MB)"  # streamed to disk
    if re.fullmatch(r"/v1/galleries/[^/]+/items", path):
        return settings.max_json_mb * 2**20, " (MEC_MAX_JSON_MB)"  # parsed in memory
    if re.fullmatch(r"/v1/models/[^/]+/(embed|search)", path):
        return INFERENCE_BYTES, ""
    return SMALL_BYTES, ""


class BodyLimit:
    """ASGI middleware: the checks above, then the app with a receive that stops at the
    limit."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        most, setting = limit(scope["method"], scope["path"],
                              request.headers.get("content-type", ""))
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > most):
            await _refuse(send, 413, f"body: {length} bytes, over the limit of {most} bytes "
                                     f"for this route{setting}")
            return
        if scope["path"].startswith("/v1/"):
            plain = presented_key(request)
            key = await known_key(plain) if plain else None
            if key is None:
                await _refuse(send, 401, "unknown API key" if plain else
                              "missing API key: send 'Authorization: Bearer <key>'")
                return
            scope.setdefault("state", {})["caller"] = (key.prefix, key.project)
        received, over, started = 0, False, False

        async def capped():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > most:
                    over = True
                    return {"type": "http.disconnect"}  # the app stops reading here
            return message

        async def answer(message) -> None:
            nonlocal started
            if over:  # the app's answer to a cut body (FastAPI's 400): ours replaces it
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped, answer)
        except ClientDisconnect:
            if not over or started:
                raise
        if over and not started:
            await _refuse(send, 413, f"body: over the limit of {most} bytes for this "
                                     f"route{setting}")


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AllowHeader:
    """ASGI middleware: a method the OpenAPI document does not give a path (OPTIONS among
    them) answers 405 with an Allow header naming every method it gives. Starlette would
    name only those of the first route that matches (POST without GET for /v1/jobs), or
    hand GET /v1/jobs/validate to GET /v1/jobs/{job_id} (a 422)."""

    def __init__(self, app, openapi) -> None:
        self.app, self.openapi = app, openapi
        self.paths: list[tuple[re.Pattern, set[str]]] | None = None  # built at first use

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            if self.paths is None:  # fixed paths before templated ones
                self.paths = [(re.compile(re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path))),
                               {m.upper() for m in methods} | ({"HEAD"} if "get" in methods
                                                               else set()))
                              for path, methods in sorted(self.openapi()["paths"].items(),
                                                          key=lambda p: p[0].count("{"))]
            allowed = next((m for pattern, m in self.paths if pattern.fullmatch(scope["path"])),
                           None)
            if allowed and scope["method"] not in allowed:
                await JSONResponse({"detail": "Method Not Allowed"}, 405, headers={
                    "Allow": ", ".join(sorted(allowed - {"HEAD"}))})(scope, receive, send)
                return
        await self.app(scope, receive, send)
