"""Teams and API keys: keys are shown once, stored as hashes, and revocable."""

from __future__ import annotations

import hashlib
import re

import pytest
import sqlalchemy as sa

from hearth.store import Conflict, Store, Team
from hearth.store._tables import api_keys


async def _raw_key_rows(store: Store) -> list[dict]:
    async with store._read() as conn:
        return [dict(row._mapping) for row in await conn.execute(sa.select(api_keys))]


async def test_first_start_creates_the_default_team_and_shows_its_key_once(store: Store) -> None:
    team, key = await store.ensure_default_team()
    assert team.name == "default"
    assert key is not None and re.fullmatch(r"e2b_[0-9a-f]{40}", key)
    assert await store.team_for_api_key(key) == team
    again, no_key = await store.ensure_default_team()
    assert again == team and no_key is None
    assert len(await store.list_api_keys(team.id)) == 1


async def test_an_existing_team_means_no_default_key(store: Store, team: Team) -> None:
    found, key = await store.ensure_default_team()
    assert found == team and key is None


async def test_created_keys_authenticate_their_team(
    store: Store, team: Team, other_team: Team
) -> None:
    key, record = await store.create_api_key(team.id, "laptop")
    other_key, _ = await store.create_api_key(other_team.id, "ci")
    assert re.fullmatch(r"e2b_[0-9a-f]{40}", key) and key != other_key
    assert (record.team_id, record.name) == (team.id, "laptop")
    assert record.masked == f"{key[:6]}…{key[-4:]}"
    assert await store.team_for_api_key(key) == team
    assert await store.team_for_api_key(other_key) == other_team


@pytest.mark.parametrize(
    "wrong",
    ["", "e2b_", "e2b_" + "0" * 40, "E2B_" + "a" * 40, "e2b_" + "A" * 40, "x" * 44, "e2b_' OR 1=1"],
)
async def test_unknown_or_malformed_keys_authenticate_nobody(
    store: Store, team: Team, wrong: str
) -> None:
    await store.create_api_key(team.id, "k")
    assert await store.team_for_api_key(wrong) is None


async def test_only_the_hash_is_stored(store: Store, team: Team) -> None:
    key, record = await store.create_api_key(team.id, "k")
    (row,) = await _raw_key_rows(store)
    assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert all(key not in str(value) for value in row.values())
    assert all(key[4:] not in str(value) for value in row.values())
    assert not hasattr(record, "key_hash")


async def test_use_is_recorded(store: Store, team: Team) -> None:
    key, record = await store.create_api_key(team.id, "k")
    assert record.last_used_at is None
    await store.team_for_api_key(key)
    (listed,) = await store.list_api_keys(team.id)
    assert listed.last_used_at is not None and listed.last_used_at >= record.created_at


async def test_revoked_keys_stop_working_and_leave_the_list(store: Store, team: Team) -> None:
    key, record = await store.create_api_key(team.id, "old")
    _, kept = await store.create_api_key(team.id, "new")
    assert await store.revoke_api_key(team.id, record.id)
    assert await store.team_for_api_key(key) is None
    assert [k.id for k in await store.list_api_keys(team.id)] == [kept.id]
    every = {k.id: k for k in await store.list_api_keys(team.id, include_revoked=True)}
    assert set(every) == {record.id, kept.id} and every[record.id].revoked_at is not None
    assert not await store.revoke_api_key(team.id, record.id)  # already revoked


async def test_a_team_cannot_revoke_or_see_another_teams_keys(
    store: Store, team: Team, other_team: Team
) -> None:
    key, record = await store.create_api_key(team.id, "k")
    assert not await store.revoke_api_key(other_team.id, record.id)
    assert not await store.revoke_api_key(team.id, "no-such-key")
    assert await store.list_api_keys(other_team.id) == []
    assert await store.team_for_api_key(key) == team


async def test_team_names_are_unique(store: Store, team: Team) -> None:
    with pytest.raises(Conflict):
        await store.create_team(team.name)
    assert await store.get_team_by_name(team.name) == team
    assert await store.get_team(team.id) == team
    assert await store.get_team("nope") is None
