"""Alembic's environment: migrations run on the connection
`scorer_svc.storage.db.upgrade` hands over (or, for `alembic revision --autogenerate` by a
developer, on sqlalchemy.url)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from scorer_svc.storage.tables import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # the alembic command line, for writing a new revision
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
