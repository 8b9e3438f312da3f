"""The schema: created from empty, upgraded idempotently, the same as the tables say."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from hearth import store as hearth_store
from hearth.store._engine import create_engine, database_url
from hearth.store._migrate import MIGRATIONS, _config
from hearth.store._tables import metadata

TABLES = {
    "teams",
    "api_keys",
    "sandboxes",
    "templates",
    "template_aliases",
    "sandbox_events",
    "template_builds",
    "template_build_logs",
    "template_tags",
}


def _head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


async def _inspect(url: str) -> tuple[set[str], str | None, list]:
    engine = await create_engine(url)
    try:
        async with engine.connect() as conn:

            def look(sync: sa.Connection) -> tuple[set[str], str | None, list]:
                context = MigrationContext.configure(sync)
                return (
                    set(sa.inspect(sync).get_table_names()),
                    context.get_current_revision(),
                    compare_metadata(context, metadata),
                )

            return await conn.run_sync(look)
    finally:
        await engine.dispose()


async def test_open_migrates_an_empty_database_to_head(database_url: str) -> None:
    tables, revision, _ = await _inspect(database_url)
    assert tables == set() and revision is None
    store = await hearth_store.open(database_url)
    await store.close()
    tables, revision, _ = await _inspect(database_url)
    assert tables >= TABLES
    assert revision == _head()


async def test_open_again_keeps_the_schema_and_the_data(database_url: str) -> None:
    async with await hearth_store.open(database_url) as store:
        team, key = await store.ensure_default_team()
    async with await hearth_store.open(database_url) as store:
        assert await store.ensure_default_team() == (team, None)
        assert key is not None and await store.team_for_api_key(key) == team
    _, revision, _ = await _inspect(database_url)
    assert revision == _head()


async def test_migrations_build_exactly_the_tables_the_code_uses(database_url: str) -> None:
    async with await hearth_store.open(database_url):
        pass
    *_, differences = await _inspect(database_url)
    assert differences == []


def test_migrations_live_in_the_package() -> None:
    assert (MIGRATIONS / "env.py").is_file()
    assert (MIGRATIONS / "versions" / "0001_initial.py").is_file()


async def test_the_sqlite_file_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "hearth.db"
    async with await hearth_store.open(f"sqlite:///{path}"):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("sqlite:////var/lib/hearth/hearth.db", "sqlite+aiosqlite:////var/lib/hearth/hearth.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgres://u:p@db/hearth", "postgresql+asyncpg://u:p@db/hearth"),
        ("postgresql://u@db:5433/hearth", "postgresql+asyncpg://u@db:5433/hearth"),
        ("postgresql+psycopg://u@db/hearth", "postgresql+asyncpg://u@db/hearth"),
    ],
)
def test_urls_get_the_async_driver(given: str, used: str) -> None:
    assert database_url(given).render_as_string(hide_password=False) == used


def test_other_databases_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        database_url("mysql://u@db/hearth")
