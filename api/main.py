"""The FastAPI application: routers under /v1, JSON errors that name the field."""

from __future__ import annotations

import difflib
import re
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import iter_route_contexts
from fastapi.staticfiles import StaticFiles
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic.json_schema import models_json_schema

from api import audit, limits
from api.routes import audit as audit_routes
from api.routes import datasets, galleries, inference, jobs, models, monitoring, system, ui
from api.schemas import GalleryItemsIn
from mec_core.config import TrainConfig
from mec_platform.errors import ServiceError
from mec_platform.jobs import JobKind
from mec_platform.specs import DeploySpec, EvaluateSpec, SweepSpec
from mec_platform.uploads import remove_stale_staging


@asynccontextmanager
async def lifespan(_app: FastAPI):
    remove_stale_staging()  # the uploads of an API process that was killed here
    yield


app = FastAPI(
    lifespan=lifespan,
    title="MEC platform",
    version="0.1.0",
    description="Self-supervised pretraining with Maximum Entropy Coding: submit jobs, "
    "follow their metrics, list finished encoders.",
)
app.include_router(jobs.router)
app.include_router(models.router)
app.include_router(inference.router)
app.include_router(galleries.router)
app.include_router(datasets.router)
app.include_router(system.router)
app.include_router(monitoring.router)
app.include_router(audit_routes.router)
app.include_router(ui.router)
app.mount("/ui/static", StaticFiles(directory=ui.UI / "static"), name="ui-static")
app.add_middleware(limits.BodyLimit)  # inside the audit log, which records its refusals
app.add_middleware(limits.AllowHeader, openapi=lambda: app.openapi())  # the one below
app.add_middleware(audit.AuditLog)
# http_requests_total{handler,method,status} and http_request_duration_seconds{handler,
# method}, by route template (unmatched paths as "none"), status grouped as 2xx, 4xx, ...
Instrumentator(excluded_handlers=["/metrics"], should_exclude_streaming_duration=True
               ).instrument(app)


# (path, method, status) -> links to the operations its answer names (OpenAPI links):
# {link: (path, method, {parameter: runtime expression})}
_JOB = "$response.body#/id"
_JOB_LINKS = {"GetJob": ("/v1/jobs/{job_id}", "get", {"job_id": _JOB})}
LINKS = {
    ("/v1/jobs", "post", "201"): _JOB_LINKS | {
        "GetMetrics": ("/v1/jobs/{job_id}/metrics", "get", {"job_id": _JOB}),
        "GetLogs": ("/v1/jobs/{job_id}/logs", "get", {"job_id": _JOB}),
        "CancelJob": ("/v1/jobs/{job_id}/cancel", "post", {"job_id": _JOB})},
    ("/v1/jobs", "post", "200"): _JOB_LINKS,
    ("/v1/jobs/{job_id}/promote", "post", "202"): _JOB_LINKS,
    ("/v1/models", "post", "202"): _JOB_LINKS,  # the import job; its model comes later
    ("/v1/models/{model_id}/deploy", "post", "202"): _JOB_LINKS,
    ("/v1/models/{model_id}/undeploy", "post", "202"): _JOB_LINKS,
    ("/v1/galleries", "post", "201"): {
        f"{verb}Gallery{what}": (f"/v1/galleries/{{name}}{path}", method,
                                 {"name": "$response.body#/name"})
        for verb, what, path, method in (("Get", "", "", "get"), ("List", "Items", "/items",
                                         "get"), ("Search", "", "/search", "post"),
                                         ("Delete", "", "", "delete"))},
    ("/v1/galleries/{name}/items", "post", "202"): {"GetImport": (
        "/v1/galleries/{name}/imports/{job_id}", "get",
        {"name": "$request.path.name", "job_id": _JOB})},
    ("/v1/datasets", "post", "201"): {
        "GetDataset": ("/v1/datasets/{name}", "get", {"name": "$response.body#/name"})},
}
TOO_LARGE = {"description": "The body is over the size limit.", "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorPublic"}}}}


def openapi() -> dict:
    """FastAPI's document, with the schemas of bodies that routes read themselves (a
    gallery add, JSON or streamed NDJSON), which FastAPI does not collect, each route's
    403 naming the scope it needs, 413 on every route with a body (api.limits), links
    from what a route creates to the routes that read it, and parameters that are a value
    or absent (HTTP has no null)."""
    if app.openapi_schema is None:
        document = FastAPI.openapi(app)
        _, defs = models_json_schema([(GalleryItemsIn, "validation")],
                                     ref_template="#/components/schemas/{model}")
        document["components"]["schemas"].update(defs["$defs"])
        paths = document["paths"]
        for path, methods in paths.items():
            for method, operation in methods.items():
                if "requestBody" in operation:
                    operation["responses"].setdefault("413", TOO_LARGE)
                for parameter in operation.get("parameters", []):
                    schema = parameter["schema"]
                    if "anyOf" in schema:
                        given = [s for s in schema.pop("anyOf") if s.get("type") != "null"]
                        schema |= given[0] if len(given) == 1 else {"anyOf": given}
                for status, response in operation["responses"].items():
                    for name, (target, verb, parameters) in LINKS.get(
                            (path, method, status), {}).items():
                        response.setdefault("links", {})[name] = {
                            "operationId": paths[target][verb]["operationId"],
                            "parameters": parameters}
        for route in iter_route_contexts(app.routes):
            for method in route.methods or ():
                refused = document["paths"].get(route.path, {}).get(method.lower(), {}).get(
                    "responses", {}).get("403")
                if refused is not None and (scope := _scope(route.dependant)):
                    refused["description"] = (f"The API key was revoked, or lacks the scope "
                                              f"'{scope}' (or admin), or the dashboard's "
                                              "cookie login sent no CSRF header.")
        app.openapi_schema = document
    return app.openapi_schema


def _scope(dependant) -> str | None:
    """The scope a route's key dependency declares (api.deps.needs)."""
    return getattr(dependant.call, "scope", None) or next(
        (s for d in dependant.dependencies if (s := _scope(d))), None)


app.openapi = openapi


@app.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    """The dashboard."""
    return RedirectResponse("/ui/")


# the fields of the job and deploy specs, for the "did you mean" of a misspelt one
SPEC_FIELDS = sorted({name for spec in (TrainConfig, EvaluateSpec, SweepSpec, DeploySpec)
                      for name in spec.model_fields})


def _field(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # drop the discriminator's tag (the job kind) that pydantic puts in the path
    return ".".join(p for p in parts if p not in set(JobKind)) or "body"


def _named(error: dict) -> tuple[str, str, str]:
    """(field, message, type); a model validator's "space.eps_sq: ..." names a field below
    the model it validates, so that field is the one named."""
    field, msg = _field(error["loc"]), error["msg"].removeprefix("Value error, ")
    head, sep, rest = msg.partition(": ")
    if error["type"] == "value_error" and sep and re.fullmatch(r"[A-Za-z_][\w.]*", head):
        field, msg = head if field == "body" else f"{field}.{head}", rest
    if error["type"] == "extra_forbidden":
        near = difflib.get_close_matches(str(error["loc"][-1]), SPEC_FIELDS, n=1, cutoff=0.8)
        msg += f" (did you mean {near[0]}?)" if near else ""
    return field, msg, error["type"]


@app.exception_handler(ServiceError)
def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
    """A service's refusal (mec_platform.errors): its status, its words as `detail`."""
    return JSONResponse(status_code=exc.status, content={"detail": str(exc)},
                        headers=exc.headers)


@app.exception_handler(RequestValidationError)
def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with `detail` as one readable line per field, and the raw errors beside it."""
    errors = [_named(e) for e in exc.errors()]
    detail = "; ".join(f"{field}: {msg}" for field, msg, _ in errors)
    raw = [{"field": field, "message": msg, "type": kind} for field, msg, kind in errors]
    return JSONResponse(status_code=422, content={"detail": detail, "errors": raw})
