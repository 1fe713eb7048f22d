"""projects and scopes of keys, jobs and models; the audit log

Existing keys keep every scope they had (all, admin included) and, with every job and
model, join the project "default". Idempotency keys become per project.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

import mec_platform.tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

EVERY_SCOPE = ["admin", "embed", "jobs:read", "jobs:write", "models:deploy"]


def _add_project(table: str, indexed: bool) -> None:
    # ADD COLUMN with a default fills the existing rows; SQLite cannot drop the default
    # afterwards without copying the table, which its foreign keys refuse, so it keeps it
    op.add_column(table, sa.Column("project", sa.String(length=64), nullable=False,
                                   server_default="default"))
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column(table, "project", server_default=None)
    if indexed:
        op.create_index(f"ix_{table}_project", table, ["project"])


def upgrade() -> None:
    _add_project("jobs", indexed=True)
    _add_project("models", indexed=True)
    _add_project("api_keys", indexed=False)
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("scopes", sa.JSON(), nullable=True))
    keys = sa.table("api_keys", sa.column("scopes", sa.JSON()))
    op.execute(keys.update().values(scopes=EVERY_SCOPE))
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("scopes", existing_type=sa.JSON(), nullable=False)
    op.execute(sa.text("UPDATE jobs SET idempotency_key = 'default:' || idempotency_key "
                       "WHERE idempotency_key IS NOT NULL"))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", mec_platform.tables.UTCDateTime(), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=True),
        sa.Column("project", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=200), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.execute(sa.text("UPDATE jobs SET idempotency_key = substr(idempotency_key, "
                       "length(project) + 2) WHERE idempotency_key IS NOT NULL"))
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("scopes")
        batch.drop_column("project")
    for table in ("models", "jobs"):
        op.drop_index(f"ix_{table}_project", table_name=table)
        op.drop_column(table, "project")
