"""Sandbox metrics in the store: kept, read back by range and as the latest of several
(each team its own, killed sandboxes' too), deleted past their retention; and a team's
series of running sandboxes and starts counted from its lifecycle events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hearth.api._metrics import max_concurrent, max_start_rate, team_series
from hearth.store import SandboxMetric, SandboxState, Store, Team

T0 = datetime(2025, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
MIB = 2**20


def _sample(sandbox_id: str, seconds: float, **fields: Any) -> SandboxMetric:
    values: dict[str, Any] = {
        "cpu_count": 2,
        "cpu_used_pct": 12.5,
        "mem_used": 100 * MIB,
        "mem_total": 512 * MIB,
        "mem_cache": 10 * MIB,
        "disk_used": 5 * MIB,
        "disk_total": 2000 * MIB,
    }
    values.update(fields)
    return SandboxMetric(sandbox_id=sandbox_id, timestamp=T0 + timedelta(seconds=seconds), **values)


async def _sandbox(store: Store, team: Team, sandbox_id: str) -> None:
    await store.insert_sandbox(
        sandbox_id=sandbox_id,
        team_id=team.id,
        template_id="base",
        end_at=T0 + timedelta(hours=1),
        cpu_count=2,
        memory_mb=512,
        disk_size_mb=2000,
        envd_version="0.6.13",
        started_at=T0,
    )


async def test_samples_read_back_by_range_in_time_order(store: Store) -> None:
    await store.add_sandbox_metrics([_sample("a1", s, mem_used=s * MIB) for s in (10, 0, 5)])
    await store.add_sandbox_metrics([_sample("b1", 5)])
    await store.add_sandbox_metrics([])  # nothing to keep: no statement
    every = await store.sandbox_metrics("a1", T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    assert [m.timestamp - T0 for m in every] == [timedelta(seconds=s) for s in (0, 5, 10)]
    assert every[1] == _sample("a1", 5, mem_used=5 * MIB)  # every field as it was written
    assert all(m.timestamp.tzinfo is UTC for m in every)
    both_ends = await store.sandbox_metrics(
        "a1", T0 + timedelta(seconds=5), T0 + timedelta(seconds=10)
    )
    assert [m.mem_used for m in both_ends] == [5 * MIB, 10 * MIB]
    assert (
        await store.sandbox_metrics("a1", T0 + timedelta(seconds=11), T0 + timedelta(hours=1)) == []
    )


async def test_the_latest_sample_is_each_teams_own_killed_sandboxes_too(
    store: Store, team: Team, other_team: Team
) -> None:
    for sandbox_id in ("a1", "a2", "gone"):
        await _sandbox(store, team, sandbox_id)
    await _sandbox(store, other_team, "theirs")
    await store.add_sandbox_metrics(
        [_sample(i, s, mem_used=s * MIB) for i in ("a1", "a2", "gone", "theirs") for s in (0, 5)]
        + [_sample("a1", 10, mem_used=10 * MIB)]
    )
    await store.set_sandbox_state("gone", SandboxState.KILLED)
    latest = await store.latest_sandbox_metrics(team.id, ["a1", "a2", "gone", "theirs", "none"])
    assert {i: m.mem_used for i, m in latest.items()} == {
        "a1": 10 * MIB,
        "a2": 5 * MIB,
        "gone": 5 * MIB,  # killed: its history is kept for the retention, as infra keeps it
    }
    assert set(await store.latest_sandbox_metrics(other_team.id, ["a1", "theirs"])) == {"theirs"}
    assert await store.latest_sandbox_metrics(team.id, []) == {}


async def test_samples_past_the_retention_are_deleted(store: Store) -> None:
    await store.add_sandbox_metrics([_sample("a1", s) for s in range(0, 60, 5)])
    assert await store.prune_sandbox_metrics(T0 + timedelta(seconds=30)) == 6
    left = await store.sandbox_metrics("a1", T0, T0 + timedelta(hours=1))
    assert [int((m.timestamp - T0).total_seconds()) for m in left] == [30, 35, 40, 45, 50, 55]
    assert await store.prune_sandbox_metrics(T0) == 0


async def _lifecycle(store: Store, team: Team, *events: tuple[str, str, float]) -> None:
    for sandbox_id, kind, seconds in events:
        stamp = T0 + timedelta(seconds=seconds)
        await store.add_event(team.id, sandbox_id, f"sandbox.{kind}", timestamp=stamp)


async def test_a_teams_running_sandboxes_and_starts_come_from_its_lifecycle(
    store: Store, team: Team, other_team: Team
) -> None:
    await _lifecycle(
        store,
        team,
        ("early", "created", -100),  # running before the range: counted from its start
        ("a", "created", 2),
        ("b", "created", 3),
        ("a", "paused", 12),
        ("early", "killed", 22),
        ("a", "resumed", 31),
        ("b", "killed", 40),
    )
    await store.add_event(team.id, "a", "log", {"line": "not a lifecycle event"})
    await _lifecycle(store, other_team, *((f"o{n}", "created", n) for n in range(10)))
    start, end = T0, T0 + timedelta(seconds=60)
    running, events = await store.lifecycle_events(team.id, start, end)
    assert running == {"early"} and [e.sandbox_id for e in events] == [
        "a",
        "b",
        "a",
        "early",
        "a",
        "b",
    ]

    points = await team_series(store, team.id, start, end, now=end)
    by_step = {int((p.timestamp - start).total_seconds()): p for p in points}
    assert {s: p.concurrent for s, p in by_step.items()} == {
        0: 3,  # early, then a and b
        5: 3,
        10: 3,  # a pauses at 12
        15: 2,
        20: 2,  # early killed at 22
        25: 1,
        30: 2,  # a resumed at 31
        35: 2,
        40: 2,  # b killed at 40
        45: 1,
        50: 1,
        55: 1,
    }
    assert by_step[0].start_rate == 2 / 5 and by_step[30].start_rate == 0
    assert (await max_concurrent(store, team.id, start, end)).value == 3
    peak = await max_concurrent(store, team.id, start, end)
    assert peak.timestamp == T0 + timedelta(seconds=3)
    rate = await max_start_rate(store, team.id, start, end)
    assert (rate.value, rate.timestamp) == (2 / 5, T0)
    # The other team's ten creates are its own.
    assert (await max_start_rate(store, other_team.id, start, end)).value == 5 / 5


async def test_a_team_that_ran_nothing_has_no_points(store: Store, team: Team) -> None:
    start, end = T0, T0 + timedelta(days=7)
    assert await team_series(store, team.id, start, end, now=end) == []
    assert (await max_concurrent(store, team.id, start, end)).value == 0
    assert (await max_start_rate(store, team.id, start, end)).value == 0
