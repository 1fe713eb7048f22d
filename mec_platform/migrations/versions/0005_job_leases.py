"""job_leases: the history of who ran each job, and when

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

import mec_platform.tables

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_leases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("claimed_at", mec_platform.tables.UTCDateTime(), nullable=False),
        sa.Column("expires", mec_platform.tables.UTCDateTime(), nullable=False),
        sa.Column("ended_at", mec_platform.tables.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_job_leases_job_id", "job_leases", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_leases_job_id", table_name="job_leases")
    op.drop_table("job_leases")
