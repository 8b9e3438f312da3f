"""Sandbox events: kept per team and sandbox, read back in time order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hearth.store import Store, Team

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


async def test_events_read_back_in_order_from_a_start(store: Store, team: Team) -> None:
    for n in (2, 0, 1):
        await store.add_event(
            team.id,
            "sbx1",
            "log",
            {"line": f"line {n}", "n": n},
            timestamp=T0 + timedelta(seconds=n),
        )
    same_time = await store.add_event(team.id, "sbx1", "lifecycle", timestamp=T0)
    await store.add_event(team.id, "sbx2", "log", {"line": "elsewhere"})

    events = await store.sandbox_events(team.id, "sbx1")
    assert [(e.type, e.payload.get("n")) for e in events] == [
        ("log", 0), ("lifecycle", None), ("log", 1), ("log", 2)
    ]  # fmt: skip
    assert events[1] == same_time and same_time.payload == {}
    assert all(e.timestamp.tzinfo is UTC and e.sandbox_id == "sbx1" for e in events)
    later = await store.sandbox_events(team.id, "sbx1", start=T0 + timedelta(seconds=1))
    assert [e.payload["n"] for e in later] == [1, 2]
    assert len(await store.sandbox_events(team.id, "sbx1", limit=2)) == 2


async def test_events_are_their_teams_only(store: Store, team: Team, other_team: Team) -> None:
    await store.add_event(team.id, "sbx1", "log", {"line": "secret"})
    assert await store.sandbox_events(other_team.id, "sbx1") == []
