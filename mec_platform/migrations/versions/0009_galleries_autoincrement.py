"""galleries: ids never given twice on SQLite either (AUTOINCREMENT)

Without AUTOINCREMENT, SQLite hands a deleted gallery's id (the highest) to the next new
gallery, and whatever still named the old id (a queued import, the import's status route)
then pointed at another project's gallery. PostgreSQL's sequences never give an id twice.

SQLite cannot add AUTOINCREMENT to a table: both tables are rebuilt, the child first, so
that dropping the old galleries table cascades to no item.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

import mec_platform.tables

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

GALLERY_COLUMNS = "id, project, name, model_id, model_version, dim, seq, created_at"
ITEM_COLUMNS = "id, gallery_id, item_id, metadata, vector, seq, updated_at"


def _tables(autoincrement: bool) -> sa.MetaData:
    metadata = sa.MetaData()
    sa.Table(
        "galleries_new", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", mec_platform.tables.UTCDateTime(), nullable=False),
        sa.UniqueConstraint("project", "name"),
        sqlite_autoincrement=autoincrement,
    )
    sa.Table("models", metadata, sa.Column("id", sa.Integer(), primary_key=True))
    sa.Table(
        "gallery_items_new", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("gallery_id", sa.Integer(),
                  sa.ForeignKey("galleries_new.id", ondelete="CASCADE"), nullable=False),
        sa.Column("item_id", sa.String(length=200), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("vector", sa.LargeBinary(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", mec_platform.tables.UTCDateTime(), nullable=False),
        sa.UniqueConstraint("gallery_id", "item_id"),
    )
    return metadata


def _rebuild(autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    metadata = _tables(autoincrement)
    for name in ("galleries_new", "gallery_items_new"):
        metadata.tables[name].create(bind)
    op.execute(f"INSERT INTO galleries_new ({GALLERY_COLUMNS}) "
               f"SELECT {GALLERY_COLUMNS} FROM galleries")
    op.execute(f"INSERT INTO gallery_items_new ({ITEM_COLUMNS}) "
               f"SELECT {ITEM_COLUMNS} FROM gallery_items")
    op.drop_table("gallery_items")  # the child first: nothing then refers to galleries
    op.drop_table("galleries")
    # SQLite renames the references to a renamed table too (gallery_items_new's key)
    op.rename_table("galleries_new", "galleries")
    op.rename_table("gallery_items_new", "gallery_items")
    op.create_index("ix_galleries_model_id", "galleries", ["model_id"])
    op.create_index("ix_gallery_items_gallery_seq", "gallery_items", ["gallery_id", "seq"])


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
