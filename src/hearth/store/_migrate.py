"""Bring a database's schema to the newest migration, from Hearth itself (no alembic.ini).

To write a migration after changing `_tables.py`:
`uv run python -m hearth.store.migrations "what changed"` autogenerates one against a
scratch SQLite database upgraded to the current head; read it, fix what it guessed, and
check it on PostgreSQL too (`tests/store` runs both).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")

# Any constant ("HEART"): concurrent starts against one PostgreSQL database migrate one at a time.
_PG_MIGRATION_LOCK = 0x4845415254


def upgrade(connection: sa.Connection) -> None:
    """Upgrade to head inside the caller's transaction (run through `run_sync`)."""
    # Alembic (with Mako and more) is imported only when a store opens, not with the package.
    from alembic import command

    if connection.dialect.name == "postgresql":
        connection.execute(sa.text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))
    command.upgrade(_config(connection), "head")


def _config(connection: sa.Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def new_revision(message: str) -> None:
    from alembic import command

    with tempfile.TemporaryDirectory() as scratch:
        engine = sa.create_engine(f"sqlite:///{scratch}/scratch.db")
        with engine.begin() as connection:
            command.upgrade(_config(connection), "head")
            command.revision(_config(connection), message=message, autogenerate=True)
        engine.dispose()
