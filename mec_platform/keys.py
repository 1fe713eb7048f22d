"""API keys: created and revoked from the command line, checked on every request.

A key belongs to one project and carries scopes. Jobs and models belong to the project of
the key that created them; a key sees only its project's, except an `admin` key, which sees
every project's and may do everything.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mec_platform.tables import ApiKey, utcnow

PREFIX = "mec_"
DEFAULT_PROJECT = "default"
PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class Scope(StrEnum):
    """What a key may do (each route declares the one it needs)."""

    ADMIN = "admin"  # every scope, every project, and the audit log
    JOBS_READ = "jobs:read"  # jobs, their metrics, models, evaluations, workers
    JOBS_WRITE = "jobs:write"  # submit and cancel jobs, upload checkpoints
    MODELS_DEPLOY = "models:deploy"  # deploy and undeploy models
    EMBED = "embed"  # embeddings and gallery search for apps


ALL_SCOPES = tuple(Scope)
DEFAULT_SCOPES = tuple(s for s in Scope if s != Scope.ADMIN)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_project(project: str) -> str:
    if not PROJECT_NAME.fullmatch(project):
        raise ValueError(f"project name {project!r}: lowercase letters, digits, '-' and '_', "
                         "at most 64, starting with a letter or digit")
    return project


def create(session: Session, name: str, scopes: list[str] | tuple[str, ...] | None = None,
           project: str = DEFAULT_PROJECT) -> tuple[ApiKey, str]:
    """A new key; the plain key is returned once and never stored. Without scopes: every
    scope but admin."""
    granted = sorted({Scope(s) for s in scopes}) if scopes else list(DEFAULT_SCOPES)
    plain = PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=plain[:12], hash=digest(plain),
                 project=check_project(project), scopes=[str(s) for s in granted])
    session.add(row)
    session.commit()
    return row, plain


def revoke(session: Session, ident: str) -> int:
    """Revoke by id or by the key's first 12 characters; returns how many were revoked."""
    where = ApiKey.id == int(ident) if ident.isdigit() else ApiKey.prefix == ident[:12]
    done = session.execute(update(ApiKey).where(where, ApiKey.revoked_at.is_(None))
                           .values(revoked_at=utcnow()))
    session.commit()
    return done.rowcount


def lookup(session: Session, plain: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.hash == digest(plain)))


def allows(key: ApiKey, scope: Scope) -> bool:
    return sees_all(key) or scope in key.scopes


def sees_all(key: ApiKey) -> bool:
    return Scope.ADMIN in key.scopes


def sees(key: ApiKey, project: str) -> bool:
    """Whether `key` may see a row of `project` (other projects' rows answer 404)."""
    return sees_all(key) or key.project == project
