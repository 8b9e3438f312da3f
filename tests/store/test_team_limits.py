"""A team's own limits: kept beside it, read with it (by id, name, key and in the
list), replaced as a whole, and its running sandboxes' totals counted against them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hearth.store import SandboxState, Store, Team, TeamLimits


async def _add(store: Store, team: Team, sandbox_id: str, **fields) -> None:
    await store.insert_sandbox(
        sandbox_id=sandbox_id,
        team_id=team.id,
        template_id="base",
        end_at=datetime.now(UTC) + timedelta(minutes=5),
        disk_size_mb=1024,
        envd_version="0.6.13",
        **fields,
    )


async def test_a_team_without_limits_has_the_servers(store: Store, team: Team) -> None:
    assert team.limits == TeamLimits()
    assert (await store.get_team(team.id)).limits == TeamLimits()


async def test_limits_read_back_every_way_a_team_is_found(store: Store, team: Team) -> None:
    limits = TeamLimits(concurrent_sandboxes=3, vcpus=0, max_timeout=600)
    await store.set_team_limits(team.id, limits)
    key, _ = await store.create_api_key(team.id, "k")
    assert (await store.get_team(team.id)).limits == limits
    assert (await store.get_team_by_name(team.name)).limits == limits
    assert (await store.team_for_api_key(key)).limits == limits
    assert [t.limits for t in await store.list_teams() if t.id == team.id] == [limits]
    # Replaced whole: what is left out goes back to the server's.
    await store.set_team_limits(team.id, TeamLimits(memory_mb=2048))
    assert (await store.get_team(team.id)).limits == TeamLimits(memory_mb=2048)
    await store.set_team_limits(team.id, TeamLimits())
    assert (await store.get_team(team.id)).limits == TeamLimits()


async def test_running_totals_count_running_sandboxes_only(store: Store, team: Team) -> None:
    assert await store.running_totals(team.id) == (0, 0, 0)
    await _add(store, team, "a", cpu_count=2, memory_mb=512)
    await _add(store, team, "b", cpu_count=4, memory_mb=1024)
    await _add(store, team, "c", cpu_count=8, memory_mb=4096, state=SandboxState.PAUSED)
    other = await store.create_team("other")
    await _add(store, other, "d", cpu_count=1, memory_mb=128)
    assert await store.running_totals(team.id) == (2, 6, 1536)
    await store.set_sandbox_state("b", SandboxState.KILLED)
    assert await store.running_totals(team.id) == (1, 2, 512)
