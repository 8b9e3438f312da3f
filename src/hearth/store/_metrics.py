"""Sandbox metrics: the sampled use of each sandbox, read back by time range, the latest
of several, and pruned past their retention; and the lifecycle events a team's series
of running sandboxes and starts are counted from."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime

import sqlalchemy as sa

from hearth.store._base import StoreBase
from hearth.store._records import (
    STARTED,
    STOPPED,
    LifecycleEvent,
    SandboxMetric,
)
from hearth.store._tables import sandbox_events, sandbox_metrics, sandboxes

_LIFECYCLE = STARTED + STOPPED
_COLUMNS = [c for c in sandbox_metrics.c if c.name != "id"]


class MetricStore(StoreBase):
    async def add_sandbox_metrics(self, samples: Iterable[SandboxMetric]) -> None:
        """Keep samples (one statement for them all: a sampler writes hundreds at once)."""
        rows = [{c.name: getattr(s, c.name) for c in _COLUMNS} for s in samples]
        if not rows:
            return
        async with self._write() as conn:
            await conn.execute(sa.insert(sandbox_metrics), rows)

    async def sandbox_metrics(
        self, sandbox_id: str, start: datetime, end: datetime
    ) -> list[SandboxMetric]:
        """The sandbox's samples from `start` to `end` (both included), oldest first."""
        query = (
            sa.select(*_COLUMNS)
            .where(
                sandbox_metrics.c.sandbox_id == sandbox_id,
                sandbox_metrics.c.timestamp >= start,
                sandbox_metrics.c.timestamp <= end,
            )
            .order_by(sandbox_metrics.c.timestamp, sandbox_metrics.c.id)
        )
        async with self._read() as conn:
            return [SandboxMetric(**row._mapping) for row in await conn.execute(query)]

    async def latest_sandbox_metrics(
        self, team_id: str, sandbox_ids: Collection[str]
    ) -> dict[str, SandboxMetric]:
        """The newest sample of each of `sandbox_ids` that is the team's (killed ones
        too, while their samples are kept) and has one."""
        if not sandbox_ids:
            return {}
        theirs = sa.select(sandboxes.c.sandbox_id).where(
            sandboxes.c.team_id == team_id, sandboxes.c.sandbox_id.in_(list(sandbox_ids))
        )
        newest = (
            sa.select(
                sandbox_metrics.c.sandbox_id,
                sa.func.max(sandbox_metrics.c.timestamp).label("newest"),
            )
            .where(sandbox_metrics.c.sandbox_id.in_(theirs.scalar_subquery()))
            .group_by(sandbox_metrics.c.sandbox_id)
            .subquery()
        )
        query = sa.select(*_COLUMNS).join(
            newest,
            sa.and_(
                sandbox_metrics.c.sandbox_id == newest.c.sandbox_id,
                sandbox_metrics.c.timestamp == newest.c.newest,
            ),
        )
        async with self._read() as conn:
            rows = await conn.execute(query)
            return {row.sandbox_id: SandboxMetric(**row._mapping) for row in rows}

    async def prune_sandbox_metrics(self, before: datetime) -> int:
        """Delete the samples older than `before`; how many there were."""
        async with self._write() as conn:
            result = await conn.execute(
                sa.delete(sandbox_metrics).where(sandbox_metrics.c.timestamp < before)
            )
            return result.rowcount or 0

    async def lifecycle_events(
        self, team_id: str, start: datetime, end: datetime
    ) -> tuple[set[str], list[LifecycleEvent]]:
        """The team's sandboxes that were running at `start` (their last lifecycle event
        before it started them), and its lifecycle events from `start` to `end`, in
        order."""
        lifecycle = sa.and_(
            sandbox_events.c.team_id == team_id, sandbox_events.c.type.in_(_LIFECYCLE)
        )
        last = (
            sa.select(sandbox_events.c.sandbox_id, sa.func.max(sandbox_events.c.id).label("id"))
            .where(lifecycle, sandbox_events.c.timestamp < start)
            .group_by(sandbox_events.c.sandbox_id)
            .subquery()
        )
        before = (
            sa.select(sandbox_events.c.sandbox_id)
            .join(last, sandbox_events.c.id == last.c.id)
            .where(sandbox_events.c.type.in_(STARTED))
        )
        during = (
            sa.select(
                sandbox_events.c.sandbox_id, sandbox_events.c.type, sandbox_events.c.timestamp
            )
            .where(
                lifecycle, sandbox_events.c.timestamp >= start, sandbox_events.c.timestamp <= end
            )
            .order_by(sandbox_events.c.timestamp, sandbox_events.c.id)
        )
        async with self._read() as conn:
            running = {row.sandbox_id for row in await conn.execute(before)}
            events = [LifecycleEvent(**row._mapping) for row in await conn.execute(during)]
        return running, events
