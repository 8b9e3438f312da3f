"""What pause and resume keep in the store: the auto-pause kind, what a pause kept, the
create-time timeout and envVars; and the migration that added them to existing rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import command

from hearth import store as hearth_store
from hearth.store import SandboxState, Store, Team
from hearth.store._engine import create_engine
from hearth.store._migrate import _config

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


async def _add(store: Store, team: Team, sandbox_id: str, **fields) -> None:
    await store.insert_sandbox(
        sandbox_id=sandbox_id,
        team_id=team.id,
        template_id="base",
        end_at=T0 + timedelta(minutes=5),
        started_at=T0,
        cpu_count=2,
        memory_mb=512,
        disk_size_mb=1024,
        envd_version="0.6.13",
        **fields,
    )


async def test_pause_fields_read_back_and_change_with_the_state(store: Store, team: Team) -> None:
    await _add(
        store,
        team,
        "paused0000000000000a",
        auto_pause=True,
        auto_pause_memory=False,
        timeout=120,
        env_vars={"A": "1"},
    )
    await _add(store, team, "plain000000000000000")
    written = await store.get_sandbox(team.id, "paused0000000000000a")
    assert written is not None
    assert (written.auto_pause_memory, written.pause_memory) == (False, None)
    assert (written.timeout, written.env_vars) == (120, {"A": "1"})
    plain = await store.get_sandbox(team.id, "plain000000000000000")
    assert plain is not None and plain.auto_pause_memory is True and plain.env_vars is None

    paused = await store.set_sandbox_state(
        "paused0000000000000a",
        SandboxState.PAUSED,
        expected=[SandboxState.RUNNING],
        pause_memory=False,
    )
    assert paused is not None and paused.state is SandboxState.PAUSED
    assert paused.pause_memory is False
    # Paused sandboxes never expire: only running ones are the reaper's.
    expired = await store.expired_sandboxes(T0 + timedelta(days=1))
    assert [s.sandbox_id for s in expired] == ["plain000000000000000"]
    assert (
        await store.set_sandbox_state(
            "paused0000000000000a", SandboxState.PAUSED, expected=[SandboxState.RUNNING]
        )
        is None
    )
    resumed = await store.set_sandbox_state(
        "paused0000000000000a", SandboxState.RUNNING, expected=[SandboxState.PAUSED]
    )
    assert resumed is not None and resumed.pause_memory is False  # the latest pause's


async def test_the_migration_keeps_existing_sandboxes(database_url: str) -> None:
    engine = await create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(_config(sync), "0001"))
            await conn.execute(
                sa.text("INSERT INTO teams (id, name, created_at) VALUES ('t1', 'old', :at)"),
                {"at": T0},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO sandboxes (sandbox_id, team_id, template_id, client_id,"
                    " state, metadata, cpu_count, memory_mb, disk_size_mb, envd_version,"
                    " auto_pause, auto_resume, started_at, end_at) VALUES ('old0000000000000000a',"
                    " 't1', 'base', 'c', 'running', '{}', 2, 512, 1024, '0.6.13', true, false,"
                    " :at, :at)"
                ),
                {"at": T0},
            )
    finally:
        await engine.dispose()
    async with await hearth_store.open(database_url) as store:
        old = await store.get_sandbox("t1", "old0000000000000000a")
    assert old is not None and old.auto_pause is True
    assert (old.auto_pause_memory, old.pause_memory, old.timeout, old.env_vars) == (
        True,
        None,
        None,
        None,
    )
