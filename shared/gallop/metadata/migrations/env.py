"""Alembic environment: runs on the connection gallop.metadata.db.migrate hands it."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from gallop.metadata.models import Base

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    # `alembic -x url=...` from the command line
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database with: alembic -x url=postgresql+psycopg://...")
    with create_engine(url).begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
