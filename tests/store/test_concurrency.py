"""Concurrent starts and requests: no lost writes, no "database is locked"."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from hearth import store as hearth_store
from hearth.store import SandboxState, Store


async def test_concurrent_first_starts_make_one_team_and_one_key(database_url: str) -> None:
    stores = await asyncio.gather(*(hearth_store.open(database_url) for _ in range(4)))
    try:
        results = await asyncio.gather(*(s.ensure_default_team() for s in stores))
        assert len({team for team, _ in results}) == 1
        assert len([key for _, key in results if key is not None]) == 1
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_concurrent_writes_and_reads_all_land(store: Store) -> None:
    team, key = await store.ensure_default_team()
    assert key is not None
    end = datetime.now(UTC) + timedelta(minutes=5)

    async def create(n: int) -> None:
        assert await store.team_for_api_key(key) == team
        await store.insert_sandbox(
            sandbox_id=f"sbx{n:017d}",
            team_id=team.id,
            template_id="base",
            end_at=end,
            cpu_count=1,
            memory_mb=256,
            disk_size_mb=0,
            envd_version="0.6.13",
        )
        await store.add_event(team.id, f"sbx{n:017d}", "created")
        if n % 2:
            paused = await store.set_sandbox_state(f"sbx{n:017d}", SandboxState.PAUSED)
            assert paused is not None

    await asyncio.gather(*(create(n) for n in range(40)))
    assert await store.count_running(team.id) == 20
    page, token = await store.list_sandboxes(team.id, limit=100)
    assert len(page) == 40 and token is None
