"""The `mec` console script: mec_core's commands plus the platform's (serving, database)."""

from __future__ import annotations

import click

import serving.cli  # noqa: F401  (registers `mec package` and `mec embed`)
from mec_core.cli import main


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command()
@click.option("--url", default=None, help="Database URL [default: MEC_DATABASE_URL, or the "
              "embedded SQLite file].")
def upgrade(url: str | None) -> None:
    """Apply all migrations; safe to run again."""
    from api.migrate import upgrade as run
    from api.settings import get_settings

    run(url or get_settings().db_url)
    click.echo("database schema is up to date")


__all__ = ["main"]

if __name__ == "__main__":
    main()
