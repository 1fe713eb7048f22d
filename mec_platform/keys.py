"""API keys: created and revoked from the command line, checked on every request."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mec_platform.tables import ApiKey, utcnow

PREFIX = "mec_"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(session: Session, name: str) -> tuple[ApiKey, str]:
    """A new key; the plain key is returned once and never stored."""
    plain = PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=plain[:12], hash=digest(plain))
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
