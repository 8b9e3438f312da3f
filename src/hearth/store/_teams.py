"""Teams and their API keys."""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from hearth.store._base import StoreBase, utc_now
from hearth.store._keys import hash_api_key, is_api_key, new_api_key
from hearth.store._records import ApiKey, Conflict, Team, TeamLimits
from hearth.store._tables import api_keys, team_limits, teams

DEFAULT_TEAM = "default"
# A key used again within this interval does not rewrite last_used_at: authenticating a
# request stays a read.
_LAST_USED_GRANULARITY = timedelta(minutes=1)

_KEY_COLUMNS = [c for c in api_keys.c if c.name != "key_hash"]
_LIMIT_COLUMNS = [c for c in team_limits.c if c.name != "team_id"]
# A team with its limits (none set: a row of NULLs, the server's defaults).
_TEAMS = sa.select(teams, *_LIMIT_COLUMNS).outerjoin(
    team_limits, team_limits.c.team_id == teams.c.id
)


def _team(row: sa.Row) -> Team:
    limits = TeamLimits(**{c.name: row._mapping[c.name] for c in _LIMIT_COLUMNS})
    return Team(id=row.id, name=row.name, created_at=row.created_at, limits=limits)


class TeamStore(StoreBase):
    async def create_team(self, name: str) -> Team:
        """A new team; `Conflict` if the name is taken."""
        async with self._write() as conn:
            return await _insert_team(conn, name)

    async def get_team(self, team_id: str) -> Team | None:
        async with self._read() as conn:
            row = (await conn.execute(_TEAMS.where(teams.c.id == team_id))).first()
        return _team(row) if row else None

    async def get_team_by_name(self, name: str) -> Team | None:
        async with self._read() as conn:
            row = (await conn.execute(_TEAMS.where(teams.c.name == name))).first()
        return _team(row) if row else None

    async def list_teams(self) -> list[Team]:
        async with self._read() as conn:
            rows = await conn.execute(_TEAMS.order_by(teams.c.created_at, teams.c.name))
        return [_team(row) for row in rows]

    async def set_team_limits(self, team_id: str, limits: TeamLimits) -> None:
        """Replace the team's limits (fields left None go back to the server's)."""
        async with self._write() as conn:
            await conn.execute(sa.delete(team_limits).where(team_limits.c.team_id == team_id))
            if limits.to_json():
                await conn.execute(
                    sa.insert(team_limits).values(team_id=team_id, **limits.to_json())
                )

    async def ensure_default_team(self) -> tuple[Team, str | None]:
        """The team a single-user installation works in, and on the very first start
        (no team at all) the plaintext of its first API key, which exists nowhere else.

        Later calls return the team named "default" (or the oldest team) and None.
        """
        try:
            async with self._write() as conn:
                first = (
                    await conn.execute(
                        _TEAMS.order_by(
                            (teams.c.name == DEFAULT_TEAM).desc(), teams.c.created_at
                        ).limit(1)
                    )
                ).first()
                if first:
                    return _team(first), None
                team = await _insert_team(conn, DEFAULT_TEAM)
                key, _ = await _insert_api_key(conn, team.id, DEFAULT_TEAM)
                return team, key
        except Conflict:
            # Another process created it between our read and our insert (PostgreSQL).
            existing = await self.get_team_by_name(DEFAULT_TEAM)
            if existing is None:
                raise
            return existing, None

    # -- API keys ------------------------------------------------------------------------

    async def create_api_key(self, team_id: str, name: str) -> tuple[str, ApiKey]:
        """A new key for the team: its plaintext (shown once, kept nowhere) and record."""
        async with self._write() as conn:
            return await _insert_api_key(conn, team_id, name)

    async def team_for_api_key(self, key: str) -> Team | None:
        """The team a key authenticates, or None (unknown, malformed or revoked).

        The key is found by its hash through a unique index: no stored secret is
        compared, so the lookup's timing says nothing about any key.
        """
        if not is_api_key(key):
            return None
        query = (
            _TEAMS.add_columns(api_keys.c.id.label("key_id"), api_keys.c.last_used_at)
            .join(api_keys, api_keys.c.team_id == teams.c.id)
            .where(api_keys.c.key_hash == hash_api_key(key), api_keys.c.revoked_at.is_(None))
        )
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        used_at = utc_now()
        if row.last_used_at is None or row.last_used_at < used_at - _LAST_USED_GRANULARITY:
            async with self._write() as conn:
                await conn.execute(
                    sa.update(api_keys)
                    .where(api_keys.c.id == row.key_id)
                    .values(last_used_at=used_at)
                )
        return _team(row)

    async def list_api_keys(self, team_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        query = sa.select(*_KEY_COLUMNS).where(api_keys.c.team_id == team_id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        async with self._read() as conn:
            rows = await conn.execute(query.order_by(api_keys.c.created_at, api_keys.c.id))
        return [ApiKey(**row._mapping) for row in rows]

    async def rename_api_key(self, team_id: str, key_id: str, name: str) -> bool:
        """Rename one of the team's live keys; False if it has no such key."""
        async with self._write() as conn:
            result = await conn.execute(_live_key(team_id, key_id).values(name=name))
        return result.rowcount == 1

    async def revoke_api_key(self, team_id: str, key_id: str) -> bool:
        """Revoke one of the team's keys; False if it has no such live key."""
        async with self._write() as conn:
            result = await conn.execute(_live_key(team_id, key_id).values(revoked_at=utc_now()))
        return result.rowcount == 1


def _live_key(team_id: str, key_id: str) -> sa.Update:
    """An update of one of the team's keys that is not revoked."""
    return sa.update(api_keys).where(
        api_keys.c.id == key_id, api_keys.c.team_id == team_id, api_keys.c.revoked_at.is_(None)
    )


async def _insert_team(conn: AsyncConnection, name: str) -> Team:
    team = Team(id=str(uuid.uuid4()), name=name, created_at=utc_now())
    await conn.execute(
        sa.insert(teams).values(id=team.id, name=team.name, created_at=team.created_at)
    )
    return team


async def _insert_api_key(conn: AsyncConnection, team_id: str, name: str) -> tuple[str, ApiKey]:
    key = new_api_key()
    record = ApiKey(
        id=str(uuid.uuid4()),
        team_id=team_id,
        name=name,
        prefix=key[:6],
        suffix=key[-4:],
        created_at=utc_now(),
        last_used_at=None,
        revoked_at=None,
    )
    row = {f.name: getattr(record, f.name) for f in _KEY_COLUMNS}
    await conn.execute(sa.insert(api_keys).values({**row, "key_hash": hash_api_key(key)}))
    return key, record
