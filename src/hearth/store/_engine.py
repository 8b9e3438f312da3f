"""Database URLs and engines: the one place that knows SQLite and PostgreSQL differ."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# Execution option that marks a connection whose transaction will write.
WRITE = "hearth_write"


def database_url(url: str | sa.URL) -> sa.URL:
    """`url` with the async driver the store uses: aiosqlite for SQLite, asyncpg for
    PostgreSQL (`postgres://`, `postgresql://` and `postgresql+asyncpg://` all do)."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database {parsed.drivername!r}: use SQLite or PostgreSQL")


async def create_engine(url: str | sa.URL) -> AsyncEngine:
    url = database_url(url)
    if url.get_backend_name() == "postgresql":
        return create_async_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:":
        await asyncio.to_thread(_prepare_sqlite_file, Path(url.database))
    engine = create_async_engine(url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT})
    sa.event.listen(engine.sync_engine, "connect", _sqlite_connect)
    sa.event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


# Wait this long for a busy writer rather than fail at once; writes are short.
_SQLITE_BUSY_TIMEOUT = 30.0


def _prepare_sqlite_file(path: Path) -> None:
    """Create the database file readable by its owner only before SQLite opens it (it
    holds sandbox access tokens; SQLite gives its -wal and -shm files the same mode; an
    empty file is a valid empty database), and put it in WAL mode, where readers do not
    wait for the writer. The mode is kept in the file, so this is done once, here:
    switching it needs the file to itself, which SQLite does not wait for, so several
    processes starting on a new file retry until one has switched it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT
    while True:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=_SQLITE_BUSY_TIMEOUT)) as db:
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # The driver's own transaction handling begins lazily and commits before DDL; turn it
    # off and emit BEGIN in `_sqlite_begin`, so a transaction is a transaction (the
    # migrations are transactional too).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # NORMAL is durable enough under WAL; SQLite enforces foreign keys only if asked.
    for pragma in ("synchronous=NORMAL", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    # A writing transaction takes the write lock up front: a deferred one that reads
    # first and then writes can fail with SQLITE_BUSY at once instead of waiting.
    immediate = connection.get_execution_options().get(WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
