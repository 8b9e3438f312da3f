"""Alembic's entry: migrate over the connection Hearth hands in (see `_migrate.py`)."""

from __future__ import annotations

from alembic import context

from hearth.store._tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through hearth.store (open() or _migrate), not alembic")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters a table by copying it; batch mode writes migrations that do that.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
