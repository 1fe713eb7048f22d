"""jobs.trial: a sweep child's trial number in a column of its own

Trials and their evaluations (children of a sweep: `parent_id`) were found by an
idempotency key, `{project}:sweep-{sweep id}-trial-{n}` or `...-evaluation-{n}`, whose
number was parsed back. The number moves to `trial`, unique per sweep and kind, and the
children's keys are cleared: they were never the caller's.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("project", sa.String),
                sa.column("kind", sa.String), sa.column("parent_id", sa.Integer),
                sa.column("idempotency_key", sa.String), sa.column("trial", sa.Integer))


def upgrade() -> None:
    op.add_column("jobs", sa.Column("trial", sa.Integer(), nullable=True))
    bind = op.get_bind()
    children = bind.execute(sa.select(jobs.c.id, jobs.c.idempotency_key).where(
        jobs.c.parent_id.is_not(None), jobs.c.idempotency_key.is_not(None))).all()
    for job_id, key in children:  # "{project}:sweep-{id}-trial-{n}", read once, here
        bind.execute(jobs.update().where(jobs.c.id == job_id).values(
            trial=int(key.rsplit("-", 1)[1]), idempotency_key=None))
    op.create_index("ix_jobs_parent_kind_trial", "jobs", ["parent_id", "kind", "trial"],
                    unique=True)


def downgrade() -> None:
    bind = op.get_bind()
    children = bind.execute(sa.select(jobs.c.id, jobs.c.project, jobs.c.kind,
                                      jobs.c.parent_id, jobs.c.trial)
                            .where(jobs.c.trial.is_not(None))).all()
    for job_id, project, kind, sweep, trial in children:
        role = "trial" if kind == "pretrain" else "evaluation"
        bind.execute(jobs.update().where(jobs.c.id == job_id).values(
            idempotency_key=f"{project}:sweep-{sweep}-{role}-{trial}"))
    op.drop_index("ix_jobs_parent_kind_trial", table_name="jobs")
    op.drop_column("jobs", "trial")  # plain ALTER TABLE ... DROP COLUMN, as in 0007
