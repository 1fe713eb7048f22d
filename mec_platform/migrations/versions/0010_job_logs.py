"""job_logs: each job's own log lines, per attempt

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

import mec_platform.tables

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_logs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("time", mec_platform.tables.UTCDateTime(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("line", sa.Text(), nullable=False))
    op.create_index("ix_job_logs_job_id_id", "job_logs", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_logs_job_id_id", "job_logs")
    op.drop_table("job_logs")
