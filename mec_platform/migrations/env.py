"""Alembic environment: the URL comes from MEC_DATABASE_URL (or the embedded SQLite)."""

from alembic import context

from mec_platform.db import make_engine
from mec_platform.settings import get_settings
from mec_platform.tables import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url

if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with make_engine(url).connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
