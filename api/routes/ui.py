"""The dashboard under /ui/: server-rendered page shells whose scripts read and change
everything through the /v1 API, logged in with an API key kept in an HttpOnly cookie."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api.deps import CSRF_COOKIE, SESSION_COOKIE, SessionDep, csrf_ok
from mec_platform import keys
from mec_platform.tables import ApiKey

UI = Path(__file__).resolve().parents[1] / "ui"
templates = Jinja2Templates(directory=UI / "templates")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGES = {"jobs": "Jobs", "compare": "Compare", "submit": "Submit", "models": "Models",
         "search": "Search", "galleries": "Galleries", "datasets": "Datasets"}

router = APIRouter(prefix="/ui", include_in_schema=False)


def secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def _cookie(response: Response, request: Request, name: str, value: str,
            http_only: bool) -> None:
    response.set_cookie(name, value, httponly=http_only, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


def _caller(request: Request, session) -> ApiKey | None:
    """The logged-in key, if the cookie holds one that is known and not revoked."""
    plain = request.cookies.get(SESSION_COOKIE)
    key = keys.lookup(session, plain) if plain else None
    return key if key is not None and key.revoked_at is None else None


def _back_to(path: str | None) -> str:
    """Where to go after logging in: the dashboard page asked for (a relative path under
    /ui/, never another site), else the jobs list."""
    if path and path.startswith("/ui/") and not any(bad in path for bad in ("//", "\\", "..")) \
            and path.isprintable():
        return path
    return "/ui/"


def _page(request: Request, session, name: str, **context) -> Response:
    key = _caller(request, session)
    if key is None:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = "/ui/login" if here == "/ui/" else f"/ui/login?next={quote(here, safe='/')}"
        return secure_headers(RedirectResponse(login, status_code=303))
    return secure_headers(templates.TemplateResponse(request, f"{name}.html", {
        "page": name, "pages": PAGES, "project": key.project, "prefix": key.prefix,
        **context}))


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, error: str | None = None, next: str | None = None):
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(request, "login.html", {
        "csrf": token, "error": error, "page": "login", "next": _back_to(next)})
    _cookie(response, request, CSRF_COOKIE, token, http_only=False)
    return secure_headers(response)


@router.post("/login")
def login(request: Request, session: SessionDep, key: Annotated[str, Form()],
          csrf: Annotated[str, Form()], next: Annotated[str, Form()] = "/ui/"):
    """Check the key and keep it in an HttpOnly cookie (never in a URL); then back to the
    page that asked for it."""
    if not csrf_ok(request, csrf):
        return login_form(request, "The form expired; try again.", next)
    found = keys.lookup(session, key.strip())
    if found is None or found.revoked_at is not None:
        response = login_form(request, "That key is unknown or revoked.", next)
        response.status_code = 401
        return response
    response = RedirectResponse(_back_to(next), status_code=303)
    _cookie(response, request, SESSION_COOKIE, key.strip(), http_only=True)
    _cookie(response, request, CSRF_COOKIE, secrets.token_urlsafe(24), http_only=False)
    return secure_headers(response)


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = ""):
    response = RedirectResponse("/ui/login", status_code=303)
    if csrf_ok(request, csrf):
        response.delete_cookie(SESSION_COOKIE, path="/")
    return secure_headers(response)


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep):
    return _page(request, session, "jobs")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, session: SessionDep, job_id: int):
    return _page(request, session, "job", job_id=job_id)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep):
    return _page(request, session, "compare")


@router.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request, session: SessionDep):
    return _page(request, session, "submit")


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, session: SessionDep):
    return _page(request, session, "models")


@router.get("/search", response_class=HTMLResponse)
def search_page(request: Request, session: SessionDep):
    return _page(request, session, "search")


@router.get("/galleries", response_class=HTMLResponse)
def galleries_page(request: Request, session: SessionDep):
    return _page(request, session, "galleries")


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, session: SessionDep):
    return _page(request, session, "datasets")
