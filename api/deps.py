"""Shared route dependencies."""

from __future__ import annotations

import secrets
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.rate_limit import limiter
from mec_platform import keys
from mec_platform.db import REQUEST_SESSIONS, end_read, get_session, session_scope
from mec_platform.keys import Scope
from mec_platform.specs import ID_MAX
from mec_platform.tables import ApiKey, Job, Model

SessionDep = Annotated[Session, Depends(get_session, scope="function",
                                         max_concurrency=REQUEST_SESSIONS)]
_bearer = HTTPBearer(auto_error=False, description="An API key from `mec keys create`.")


SESSION_COOKIE = "mec_key"  # the dashboard's login: HttpOnly, SameSite=Strict
CSRF_COOKIE, CSRF_HEADER = "mec_csrf", "X-CSRF-Token"  # double submit, for cookie logins
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_ok(request: Request, sent: str | None) -> bool:
    """Whether `sent` (a header or form field) matches the CSRF cookie."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return bool(cookie) and sent is not None and secrets.compare_digest(cookie, sent)


ROW_CACHE_SECONDS = 1.0  # how long a process reuses a key's (or a served model's) row


class _Recent:
    """Rows read within ROW_CACHE_SECONDS, for the hot path of apps' embed and search
    calls (reading the key and the model there was 40 % of the API's CPU, bench/
    bench_embed_route.py under py-spy). The price: a revoked key, or an undeployed model,
    still passes in each process for up to that long."""

    def __init__(self) -> None:
        self.rows: dict = {}

    def get(self, ident):
        until, row = self.rows.get(ident, (0.0, None))
        return row if until > time.monotonic() else None

    def put(self, ident, row) -> None:
        if row is not None:
            self.rows[ident] = (time.monotonic() + ROW_CACHE_SECONDS, row)


_keys, _models = _Recent(), _Recent()


def _read_key(session: Session, plain: str) -> ApiKey | None:
    key = keys.lookup(session, plain)
    end_read(session)
    _keys.put(keys.digest(plain), key)
    return key


def _read_key_alone(plain: str) -> ApiKey | None:
    with session_scope() as session:
        return _read_key(session, plain)


def presented_key(request: Request) -> str | None:
    """The key the request presents: its bearer token, else the dashboard's cookie."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.cookies.get(SESSION_COOKIE) or None


async def known_key(plain: str) -> ApiKey | None:
    """The row of a presented key (reused for ROW_CACHE_SECONDS), read before a request's
    body is (api.limits)."""
    return _keys.get(keys.digest(plain)) or await run_in_threadpool(_read_key_alone, plain)


async def current_key(session: SessionDep, request: Request,
                      credentials: Annotated[HTTPAuthorizationCredentials | None,
                                             Depends(_bearer)]) -> ApiKey:
    """The caller's API key, from the Authorization header or the dashboard's cookie: 401
    when missing or unknown, 403 when revoked (within ROW_CACHE_SECONDS of the revocation),
    or when a state-changing request with the cookie lacks the CSRF header. The audit log
    reads who called from the request's state."""
    plain = credentials.credentials if credentials is not None else None
    by_cookie = plain is None and SESSION_COOKIE in request.cookies
    if by_cookie:
        plain = request.cookies[SESSION_COOKIE]
        if request.method not in SAFE_METHODS and \
                not csrf_ok(request, request.headers.get(CSRF_HEADER)):
            raise HTTPException(403, f"{CSRF_HEADER}: missing or wrong (a request with the "
                                     "dashboard's cookie must send it)")
    if not plain:
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    key = _keys.get(keys.digest(plain)) or await run_in_threadpool(_read_key, session, plain)
    if key is None:
        raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    request.state.caller = (key.prefix, key.project)
    if key.revoked_at is not None:
        raise HTTPException(403, f"API key {key.prefix}... was revoked")
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def needs(scope: Scope):
    """A route's dependency: the caller's key, which must carry `scope` (or admin).
    The scope is kept on the dependency, so the route table says what each route needs."""
    async def key_with_scope(key: CurrentKey) -> ApiKey:  # no I/O: no thread hop
        if not keys.allows(key, scope):
            raise HTTPException(403, f"API key {key.prefix}... lacks the scope '{scope}' "
                                     f"(it has: {', '.join(key.scopes) or 'none'})")
        return key
    key_with_scope.scope = scope
    return key_with_scope


ReadKey = Annotated[ApiKey, Depends(needs(Scope.JOBS_READ))]
WriteKey = Annotated[ApiKey, Depends(needs(Scope.JOBS_WRITE))]
DeployKey = Annotated[ApiKey, Depends(needs(Scope.MODELS_DEPLOY))]
AdminKey = Annotated[ApiKey, Depends(needs(Scope.ADMIN))]
EmbedKey = Annotated[ApiKey, Depends(needs(Scope.EMBED))]


def submission_quota(key: WriteKey) -> None:
    """Per-key rate limit on job submissions (by keys that may submit): 429 with
    Retry-After when exceeded."""
    wait = limiter().acquire(f"submit:{key.id}")
    if wait > 0:
        raise HTTPException(429, f"too many submissions for key {key.prefix}...; retry in "
                                 f"{wait:.0f} s", headers={"Retry-After": str(int(wait) + 1)})


def job_or_404(job_id: Annotated[int, Path(ge=1, le=ID_MAX)], session: SessionDep,
               key: CurrentKey) -> Job:
    """The job, if it exists in a project the key sees (another project's job: 404 too,
    so that its existence is not revealed)."""
    job = session.get(Job, job_id)
    end_read(session)
    if job is None or not keys.sees(key, job.project):
        raise HTTPException(404, f"job {job_id} not found")
    return job


def model_or_404(model_id: Annotated[int, Path(ge=1, le=ID_MAX)], session: SessionDep,
                 key: CurrentKey) -> Model:
    """The model, if it exists in a project the key sees (else 404)."""
    model = session.get(Model, model_id)
    end_read(session)
    if model is None or not keys.sees(key, model.project):
        raise HTTPException(404, f"model {model_id} not found")
    return model


def _read_model(session: Session, model_id: int) -> Model | None:
    model = session.get(Model, model_id)
    end_read(session)
    _models.put(model_id, model)
    return model


async def served_model_or_404(model_id: Annotated[int, Path(ge=1, le=ID_MAX)],
                              session: SessionDep, key: CurrentKey) -> Model:
    """model_or_404 for the inference routes, whose deployment may be up to
    ROW_CACHE_SECONDS old."""
    model = _models.get(model_id) or await run_in_threadpool(_read_model, session, model_id)
    if model is None or not keys.sees(key, model.project):
        raise HTTPException(404, f"model {model_id} not found")
    return model


JobDep = Annotated[Job, Depends(job_or_404)]
ModelDep = Annotated[Model, Depends(model_or_404)]
ServedModelDep = Annotated[Model, Depends(served_model_or_404)]
