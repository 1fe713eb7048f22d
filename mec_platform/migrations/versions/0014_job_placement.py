"""jobs.placement: where the ranks of a multi-node job run, or what they wait for

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("placement", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "placement")
