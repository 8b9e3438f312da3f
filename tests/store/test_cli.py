"""`hearth keys`: create, list and revoke keys in the database the settings name."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from hearth import store as hearth_store
from hearth.cli import main
from hearth.config import settings


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


async def _team_for(url: str, key: str) -> str | None:
    async with await hearth_store.open(url) as store:
        team = await store.team_for_api_key(key)
    return team.name if team else None


def test_keys_create_list_revoke(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HEARTH_DATABASE_URL", database_url)
    code, out, err = _run(capsys, "keys", "create", "--name", "laptop")
    assert code == 0 and re.fullmatch(r"e2b_[0-9a-f]{40}\n", out) and "only" in err
    key = out.strip()
    assert asyncio.run(_team_for(database_url, key)) == "default"

    code, out, _ = _run(capsys, "keys", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["ID", "NAME", "KEY"] and len(lines) == 2
    key_id, name, masked = lines[1].split()[:3]
    assert (name, masked) == ("laptop", f"{key[:6]}…{key[-4:]}")
    assert key not in out

    assert _run(capsys, "keys", "revoke", key_id)[0] == 0
    assert asyncio.run(_team_for(database_url, key)) is None
    assert len(_run(capsys, "keys", "list")[1].splitlines()) == 1
    assert "REVOKED" in _run(capsys, "keys", "list", "--all")[1]
    code, _, err = _run(capsys, "keys", "revoke", key_id)
    assert code == 1 and "no live key" in err


def test_keys_need_an_existing_team_other_than_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("HEARTH_DATABASE_URL", raising=False)
    code, out, err = _run(capsys, "keys", "create", "--team", "nobody")
    assert code == 1 and out == "" and "no team named 'nobody'" in err
    assert (tmp_path / "hearth.db").exists()  # the default database lives in the data dir


def test_database_settings() -> None:
    default = settings({})
    assert default.data_dir == Path("/var/lib/hearth")
    assert default.database_url == "sqlite+aiosqlite:////var/lib/hearth/hearth.db"
    chosen = settings({"HEARTH_DATA_DIR": "/srv/h", "HEARTH_DATABASE_URL": "postgresql://db/h"})
    assert chosen.data_dir == Path("/srv/h") and chosen.database_url == "postgresql://db/h"
    assert settings({"HEARTH_DATA_DIR": "/srv/h"}).database_url.endswith(":////srv/h/hearth.db")
