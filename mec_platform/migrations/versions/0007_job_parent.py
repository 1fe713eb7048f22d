"""jobs.parent_id: a sweep's trials point at the sweep

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("parent_id", sa.Integer(), nullable=True))
    op.create_index("ix_jobs_parent_id", "jobs", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_parent_id", table_name="jobs")
    # a plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch copy of `jobs` would
    # drop the table, which its foreign keys forbid
    op.drop_column("jobs", "parent_id")
