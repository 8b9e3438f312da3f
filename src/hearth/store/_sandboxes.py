"""Sandboxes: their records, lists with filters and cursors, state and timeouts."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from hearth.store import _cursor
from hearth.store._base import StoreBase, utc_now
from hearth.store._records import Sandbox, SandboxState
from hearth.store._tables import UTCDateTime, sandboxes

LIVE_STATES = (SandboxState.RUNNING, SandboxState.PAUSED)
MAX_PAGE = 100


class SandboxStore(StoreBase):
    async def insert_sandbox(
        self,
        *,
        sandbox_id: str,
        team_id: str,
        template_id: str,
        end_at: datetime,
        cpu_count: int,
        memory_mb: int,
        disk_size_mb: int,
        envd_version: str,
        alias: str | None = None,
        client_id: str = "",
        state: SandboxState = SandboxState.RUNNING,
        metadata: Mapping[str, str] | None = None,
        envd_access_token: str | None = None,
        traffic_access_token: str | None = None,
        allow_internet: bool | None = True,
        auto_pause: bool = False,
        auto_resume: bool = False,
        auto_pause_memory: bool = True,
        timeout: int | None = None,
        env_vars: Mapping[str, str] | None = None,
        network: Mapping[str, Any] | None = None,
        started_at: datetime | None = None,
        node_id: str | None = None,
        runtime: str | None = None,
    ) -> Sandbox:
        """Record a new sandbox; `Conflict` if the id exists."""
        row = {
            "sandbox_id": sandbox_id,
            "team_id": team_id,
            "template_id": template_id,
            "alias": alias,
            "client_id": client_id,
            "state": SandboxState(state).value,
            "metadata": dict(metadata or {}),
            "cpu_count": cpu_count,
            "memory_mb": memory_mb,
            "disk_size_mb": disk_size_mb,
            "envd_version": envd_version,
            "envd_access_token": envd_access_token,
            "traffic_access_token": traffic_access_token,
            "allow_internet": allow_internet,
            "auto_pause": auto_pause,
            "auto_resume": auto_resume,
            "auto_pause_memory": auto_pause_memory,
            "pause_memory": None,
            "timeout": timeout,
            "env_vars": dict(env_vars) if env_vars is not None else None,
            "network": dict(network) if network is not None else None,
            "started_at": started_at or utc_now(),
            "end_at": end_at,
            "node_id": node_id,
            "runtime": runtime,
            "killed_at": None,
        }
        async with self._write() as conn:
            result = await conn.execute(sa.insert(sandboxes).values(row).returning(*sandboxes.c))
            return _sandbox(result.one())

    async def get_sandbox(
        self, team_id: str, sandbox_id: str, *, include_killed: bool = False
    ) -> Sandbox | None:
        """The team's sandbox, or None: unknown, another team's, or killed (unless asked)."""
        query = sa.select(sandboxes).where(
            sandboxes.c.sandbox_id == sandbox_id, sandboxes.c.team_id == team_id
        )
        if not include_killed:
            query = query.where(sandboxes.c.state != SandboxState.KILLED.value)
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return _sandbox(row) if row else None

    async def list_sandboxes(
        self,
        team_id: str,
        *,
        states: Collection[SandboxState] = LIVE_STATES,
        metadata: Mapping[str, str] | None = None,
        template: str | None = None,
        started_after: datetime | None = None,
        order: Literal["desc", "asc"] = "desc",
        limit: int = MAX_PAGE,
        next_token: str | None = None,
    ) -> tuple[list[Sandbox], str | None]:
        """One page of the team's sandboxes and the token of the next page (None: last).

        Order: newest first (`started_at` descending, then `sandbox_id` ascending), or
        the exact reverse for `order="asc"`; running and paused in one stream. Filters:
        `metadata` pairs must all equal the sandbox's, `template` is an id or alias,
        `started_after` is inclusive. They are all applied in SQL, so a page is full
        whenever a next one exists. `InvalidCursor` for a token this store did not make.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be within 1..{MAX_PAGE}, not {limit}")
        ascending = order == "asc"
        query = sa.select(sandboxes).where(
            sandboxes.c.team_id == team_id,
            _in_states(states),
            *self._sandbox_filters(metadata, template, started_after),
        )
        started, sid = sandboxes.c.started_at, sandboxes.c.sandbox_id
        if next_token:
            at, after_id = _cursor.decode(next_token, ascending)
            if ascending:
                query = query.where(sa.or_(started > at, sa.and_(started == at, sid < after_id)))
            else:
                query = query.where(sa.or_(started < at, sa.and_(started == at, sid > after_id)))
        ordering = (started.asc(), sid.desc()) if ascending else (started.desc(), sid.asc())
        async with self._read() as conn:
            rows = (await conn.execute(query.order_by(*ordering).limit(limit + 1))).all()
        page = [_sandbox(row) for row in rows[:limit]]
        if len(rows) <= limit:
            return page, None
        last = page[-1]
        return page, _cursor.encode(last.started_at, last.sandbox_id, ascending)

    async def count_running(
        self,
        team_id: str,
        *,
        metadata: Mapping[str, str] | None = None,
        template: str | None = None,
        started_after: datetime | None = None,
    ) -> int:
        """How many of the team's sandboxes run and match the filters (as `list_sandboxes`):
        the `X-Total-Running` header, and the team's concurrency without filters."""
        query = (
            sa.select(sa.func.count())
            .select_from(sandboxes)
            .where(
                sandboxes.c.team_id == team_id,
                sandboxes.c.state == SandboxState.RUNNING.value,
                *self._sandbox_filters(metadata, template, started_after),
            )
        )
        async with self._read() as conn:
            return (await conn.execute(query)).scalar_one()

    async def running_totals(self, team_id: str) -> tuple[int, int, int]:
        """The team's running sandboxes: how many, and their vCPUs and MiB together."""
        query = sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sandboxes.c.cpu_count), 0),
            sa.func.coalesce(sa.func.sum(sandboxes.c.memory_mb), 0),
        ).where(sandboxes.c.team_id == team_id, sandboxes.c.state == SandboxState.RUNNING.value)
        async with self._read() as conn:
            count, vcpus, memory = (await conn.execute(query)).one()
        return int(count), int(vcpus), int(memory)

    async def set_sandbox_state(
        self,
        sandbox_id: str,
        state: SandboxState,
        *,
        team_id: str | None = None,
        expected: Iterable[SandboxState] | None = None,
        end_at: datetime | None = None,
        node_id: str | None = None,
        pause_memory: bool | None = None,
    ) -> Sandbox | None:
        """Move a sandbox to `state` (setting `end_at`/`node_id`/`pause_memory` too when
        given), only if it is in one of the `expected` states (any live one by default)
        and, when `team_id` is given, the team's. Returns the updated sandbox, or None if
        nothing matched. Killed is final: a killed sandbox never changes again.
        """
        state = SandboxState(state)
        values: dict[str, Any] = {"state": state.value}
        if state is SandboxState.KILLED:
            values["killed_at"] = utc_now()
        if end_at is not None:
            values["end_at"] = end_at
        if node_id is not None:
            values["node_id"] = node_id
        if pause_memory is not None:
            values["pause_memory"] = pause_memory
        allowed = LIVE_STATES if expected is None else tuple(expected)
        return await self._update_live(sandbox_id, team_id, values, allowed)

    async def set_end_at(
        self,
        sandbox_id: str,
        end_at: datetime,
        *,
        team_id: str | None = None,
        only_extend: bool = False,
    ) -> Sandbox | None:
        """Set when a live sandbox times out (it may shorten: `POST .../timeout`), or with
        `only_extend` never move it earlier (`refreshes`, connect). Returns the sandbox
        as it now is, or None if there is no such live sandbox (of that team)."""
        new_end: sa.ColumnElement[datetime] = sa.bindparam(
            "new_end_at", end_at, type_=UTCDateTime()
        )
        if only_extend:
            new_end = sa.case((sandboxes.c.end_at < new_end, new_end), else_=sandboxes.c.end_at)
        return await self._update_live(sandbox_id, team_id, {"end_at": new_end})

    async def set_sandbox_network(
        self,
        sandbox_id: str,
        network: Mapping[str, Any] | None,
        *,
        allow_internet: bool = True,
        team_id: str | None = None,
    ) -> Sandbox | None:
        """Replace a live sandbox's recorded network config (`PUT .../network`)."""
        value = dict(network) if network is not None else None
        values = {"network": value, "allow_internet": allow_internet}
        return await self._update_live(sandbox_id, team_id, values)

    async def expired_sandboxes(self, now: datetime | None = None) -> list[Sandbox]:
        """Running sandboxes whose `end_at` has passed, soonest first (for the reaper,
        which kills or pauses each one through `set_sandbox_state`)."""
        query = (
            sa.select(sandboxes)
            .where(
                sandboxes.c.state == SandboxState.RUNNING.value,
                sandboxes.c.end_at <= (now or utc_now()),
            )
            .order_by(sandboxes.c.end_at, sandboxes.c.sandbox_id)
        )
        async with self._read() as conn:
            return [_sandbox(row) for row in await conn.execute(query)]

    async def running_on_node(self, node_id: str, *, include_paused: bool = False) -> list[Sandbox]:
        """The sandboxes the store places on a node (for reconcile after a restart)."""
        states = LIVE_STATES if include_paused else (SandboxState.RUNNING,)
        query = (
            sa.select(sandboxes)
            .where(
                sandboxes.c.node_id == node_id,
                _in_states(states),
            )
            .order_by(sandboxes.c.started_at, sandboxes.c.sandbox_id)
        )
        async with self._read() as conn:
            return [_sandbox(row) for row in await conn.execute(query)]

    async def _update_live(
        self,
        sandbox_id: str,
        team_id: str | None,
        values: dict[str, Any],
        states: Iterable[SandboxState] = LIVE_STATES,
    ) -> Sandbox | None:
        """Update the sandbox if it is in one of `states` (never once killed) and, when
        `team_id` is given, the team's; return it as it now is, or None."""
        where = [
            sandboxes.c.sandbox_id == sandbox_id,
            _in_states(s for s in states if s != SandboxState.KILLED),
        ]
        if team_id is not None:
            where.append(sandboxes.c.team_id == team_id)
        async with self._write() as conn:
            result = await conn.execute(
                sa.update(sandboxes).where(*where).values(values).returning(*sandboxes.c)
            )
            row = result.first()
        return _sandbox(row) if row else None

    def _sandbox_filters(
        self,
        metadata: Mapping[str, str] | None,
        template: str | None,
        started_after: datetime | None,
    ) -> list[sa.ColumnElement[bool]]:
        filters: list[sa.ColumnElement[bool]] = []
        if metadata:
            filters.append(self._metadata_matches(metadata))
        if template is not None:
            filters.append(
                sa.or_(sandboxes.c.template_id == template, sandboxes.c.alias == template)
            )
        if started_after is not None:
            filters.append(sandboxes.c.started_at >= started_after)
        return filters

    def _metadata_matches(self, metadata: Mapping[str, str]) -> sa.ColumnElement[bool]:
        """True where every pair equals the sandbox's metadata; any key or value text."""
        if self._postgres:
            wanted = sa.bindparam(None, dict(metadata), type_=postgresql.JSONB())
            return sandboxes.c.metadata.op("@>")(wanted)
        # SQLite's JSON paths cannot spell every key (a `"` in it), so walk the pairs.
        conditions = []
        for key, value in metadata.items():
            pairs = sa.func.json_each(sandboxes.c.metadata).table_valued("key", "value", "type")
            conditions.append(
                sa.select(1)
                .select_from(pairs)
                .where(pairs.c.key == key, pairs.c.type == "text", pairs.c.value == value)
                .exists()
            )
        return sa.and_(*conditions)


def _in_states(states: Iterable[SandboxState]) -> sa.ColumnElement[bool]:
    return sandboxes.c.state.in_([SandboxState(s).value for s in states])


def _sandbox(row: sa.Row[Any]) -> Sandbox:
    values = dict(row._mapping)
    values["state"] = SandboxState(values["state"])
    return Sandbox(**values)
