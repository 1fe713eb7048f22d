"""The FastAPI application: routers under /v1, JSON errors that name the field."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_fastapi_instrumentator import Instrumentator

from api import audit
from api.routes import audit as audit_routes
from api.routes import galleries, inference, jobs, models, monitoring, system, ui
from mec_platform.jobs import JobKind

app = FastAPI(
    title="MEC platform",
    version="0.1.0",
    description="Self-supervised pretraining with Maximum Entropy Coding: submit jobs, "
    "follow their metrics, list finished encoders.",
)
app.include_router(jobs.router)
app.include_router(models.router)
app.include_router(inference.router)
app.include_router(galleries.router)
app.include_router(system.router)
app.include_router(monitoring.router)
app.include_router(audit_routes.router)
app.include_router(ui.router)
app.mount("/ui/static", StaticFiles(directory=ui.UI / "static"), name="ui-static")
app.add_middleware(audit.AuditLog)
# http_requests_total{handler,method,status} and http_request_duration_seconds{handler,
# method}, by route template (unmatched paths as "none"), status grouped as 2xx, 4xx, ...
Instrumentator(excluded_handlers=["/metrics"], should_exclude_streaming_duration=True
               ).instrument(app)


@app.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    """The dashboard."""
    return RedirectResponse("/ui/")


def _field(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # drop the discriminator's tag (the job kind) that pydantic puts in the path
    return ".".join(p for p in parts if p not in set(JobKind)) or "body"


@app.exception_handler(RequestValidationError)
def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with `detail` as one readable line per field, and the raw errors beside it."""
    errors = [e | {"msg": e["msg"].removeprefix("Value error, ")} for e in exc.errors()]
    detail = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in errors)
    raw = [{"field": _field(e["loc"]), "message": e["msg"], "type": e["type"]} for e in errors]
    return JSONResponse(status_code=422, content={"detail": detail, "errors": raw})
