"""Sandbox events: lifecycle records and logs, per sandbox in time order."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from hearth.store._base import StoreBase, utc_now
from hearth.store._records import SandboxEvent
from hearth.store._tables import sandbox_events


class EventStore(StoreBase):
    async def add_event(
        self,
        team_id: str,
        sandbox_id: str,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        timestamp: datetime | None = None,
    ) -> SandboxEvent:
        row = {
            "team_id": team_id,
            "sandbox_id": sandbox_id,
            "type": type,
            "timestamp": timestamp or utc_now(),
            "payload": dict(payload or {}),
        }
        async with self._write() as conn:
            result = await conn.execute(
                sa.insert(sandbox_events).values(row).returning(*sandbox_events.c)
            )
            return SandboxEvent(**result.one()._mapping)

    async def sandbox_events(
        self,
        team_id: str,
        sandbox_id: str,
        *,
        start: datetime | None = None,
        limit: int = 1000,
    ) -> list[SandboxEvent]:
        """The sandbox's events from `start` (inclusive) on, oldest first, at most `limit`."""
        query = sa.select(sandbox_events).where(
            sandbox_events.c.team_id == team_id, sandbox_events.c.sandbox_id == sandbox_id
        )
        if start is not None:
            query = query.where(sandbox_events.c.timestamp >= start)
        query = query.order_by(sandbox_events.c.timestamp, sandbox_events.c.id).limit(limit)
        async with self._read() as conn:
            return [SandboxEvent(**row._mapping) for row in await conn.execute(query)]
