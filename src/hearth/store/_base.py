"""What every part of the store shares: the engine and short read and write transactions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hearth.store._engine import WRITE
from hearth.store._records import Conflict


def utc_now() -> datetime:
    return datetime.now(UTC)


class StoreBase:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with _plain_errors():
            async with self._engine.connect() as conn:
                yield conn

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        with _plain_errors():
            async with self._engine.connect() as conn:
                await conn.execution_options(**{WRITE: True})
                async with conn.begin():
                    yield conn


@contextmanager
def _plain_errors() -> Iterator[None]:
    """Raise what callers can catch without SQLAlchemy: `Conflict` for a broken unique or
    foreign key, and the `ValueError` of a value the schema refuses (a naive datetime)."""
    try:
        yield
    except sa.exc.IntegrityError as e:
        raise Conflict(str(e.orig)) from e
    except sa.exc.StatementError as e:
        if isinstance(e.orig, ValueError) and not isinstance(e, sa.exc.DBAPIError):
            raise e.orig from e
        raise
