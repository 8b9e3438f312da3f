"""Every store test runs twice: on a SQLite file and on a throwaway PostgreSQL cluster.

The cluster is Debian's `postgresql` server (scripts/setup.sh installs it), initialised
in a temporary directory, listening on a free loopback port and a private socket
directory, started once per session and removed at its end. Each test gets a database
of its own in it, so every test also migrates an empty database.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from hearth import store as hearth_store


def _postgres_bindir() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for bindir in reversed(candidates):
        if os.access(Path(bindir) / "initdb", os.X_OK):
            return Path(bindir)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: the store tests run on"
        " PostgreSQL too. Install Debian's `postgresql` package (`make setup` does)."
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A running PostgreSQL cluster; yields the URL of its `postgres` database."""
    bindir = _postgres_bindir()
    root = Path(tempfile.mkdtemp(prefix="hearth-pg-"))
    # initdb refuses to run as root: the server runs as `postgres`, which owns its files.
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres", "postgres")
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    port = _free_port()

    def run(*command: str | Path) -> None:
        done = subprocess.run(
            [*as_postgres, *map(str, command)], capture_output=True, text=True, cwd=root
        )
        if done.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            pytest.fail(f"{command[0]} failed:\n{done.stdout}{done.stderr}{server_log}")

    try:
        run("mkdir", sockets)
        run(bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync")  # fmt: skip
        options = f"-k {sockets} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(bindir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start")
        try:
            yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
        finally:
            run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/hearth.db"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"hearth_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = server.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield server.rsplit("/", 1)[0] + f"/{name}"
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[hearth_store.Store]:
    opened = await hearth_store.open(database_url)
    yield opened
    await opened.close()


@pytest.fixture
async def team(store: hearth_store.Store) -> hearth_store.Team:
    return await store.create_team("team-a")


@pytest.fixture
async def other_team(store: hearth_store.Store) -> hearth_store.Team:
    return await store.create_team("team-b")
