"""workers.processes: how many training processes a worker can launch for one job

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workers", sa.Column("processes", sa.Integer(), nullable=False,
                                       server_default="1"))


def downgrade() -> None:
    op.drop_column("workers", "processes")
