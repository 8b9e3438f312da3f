"""The store: teams, API keys, sandboxes, templates and their builds, events and
metrics, behind plain async methods.

Every method runs its own short transaction and returns records from `_records`, so
callers never hold a session or a row. Writes that race (two pauses, a kill during a
resume) are single conditional statements: the database decides, not a read before.
Where a write must read first (a build's next log number), it locks the row it reads.
"""

from __future__ import annotations

import sqlalchemy as sa

from hearth.store._builds import BuildStore
from hearth.store._engine import create_engine
from hearth.store._events import EventStore
from hearth.store._metrics import MetricStore
from hearth.store._migrate import upgrade
from hearth.store._sandboxes import SandboxStore
from hearth.store._teams import TeamStore
from hearth.store._templates import TemplateStore


async def open(url: str | sa.URL) -> Store:
    """Connect to the database at `url` and create or upgrade its schema to the newest."""
    engine = await create_engine(url)
    store = Store(engine)
    try:
        async with store._write() as conn:
            await conn.run_sync(upgrade)
    except BaseException:
        await engine.dispose()
        raise
    return store


class Store(TeamStore, SandboxStore, TemplateStore, BuildStore, EventStore, MetricStore):
    async def close(self) -> None:
        await self._engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
