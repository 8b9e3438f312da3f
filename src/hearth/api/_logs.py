"""Sandbox logs on the server: envd's lines pulled and kept per sandbox, bounded, kept
for a while after a kill, merged with the sandbox's lifecycle events for the logs routes.

envd holds its lines in a bounded ring (`hearth.envd.logs`) and answers `GET /logs`
with the ones after a sequence number. The API pulls them, the same way for every
runtime, whenever someone reads the logs and just before the sandbox is paused or
killed, and appends them to `<data_dir>/sandbox-logs/<id>.jsonl` (a `.cursor` file
beside it says how far it got, so a restart does not pull them twice). Each file is
held to `max_bytes` as it grows (the oldest lines go first); a killed sandbox's file is
deleted `retention` seconds after its last line. Without a data directory the lines
are kept in memory, with the same bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from hearth.store import SandboxEvent

log = logging.getLogger(__name__)

LEVELS = ("debug", "info", "warn", "error")
SYSTEM_LOGGER = "system"  # the logger name of lifecycle events (the CLI's `--loggers`)
PULL_TIMEOUT = 2.0  # seconds a pull may take; a read serves what is kept meanwhile
PULL_PAGE = 5000  # lines asked of envd at a time
SWEEP_INTERVAL = 60.0  # seconds between two looks for expired logs
SUFFIX = ".jsonl"
_TIMESTAMP_KEY = '"timestamp":"'


@dataclass(frozen=True)
class LogLine:
    """One log line: when, its JSON text (what the v1 route's `line` is), and parsed."""

    timestamp: datetime
    raw: str
    record: dict[str, Any]

    @property
    def level(self) -> str:
        level = str(self.record.get("level", "info")).lower()
        return "warn" if level == "warning" else level if level in LEVELS else "info"

    @property
    def message(self) -> str:
        return str(self.record.get("message", ""))

    def fields(self) -> dict[str, str]:
        """Every key but `level` and `message`, as strings (infra's flat fields; nested
        values as their JSON)."""
        out = {}
        for key, value in self.record.items():
            if key in ("level", "message") or value is None:
                continue
            if isinstance(value, bool):
                out[key] = "true" if value else "false"
            elif isinstance(value, str):
                out[key] = value
            elif isinstance(value, int | float):
                out[key] = str(value)
            else:
                out[key] = json.dumps(value, separators=(",", ":"), sort_keys=True)
        return out


def event_line(event: SandboxEvent) -> LogLine:
    """A lifecycle event from the store as a log line of the `system` logger."""
    verb = event.type.rpartition(".")[2].replace("_", " ")
    record: dict[str, Any] = {
        "level": "info",
        "logger": SYSTEM_LOGGER,
        "event_type": event.type,
        **{k: v for k, v in event.payload.items() if k not in ("level", "message")},
        "message": f"Sandbox {verb}",
        "timestamp": _iso(event.timestamp),
    }
    raw = json.dumps(record, separators=(",", ":"), default=str)
    return LogLine(event.timestamp, raw, record)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _line_time(raw: str) -> str | None:
    """The timestamp envd put last in the line, without parsing all of it."""
    at = raw.rfind(_TIMESTAMP_KEY)
    if at < 0:
        return None
    start = at + len(_TIMESTAMP_KEY)
    end = raw.find('"', start)
    return raw[start:end] if end > 0 else None


def parse(raw: str) -> LogLine | None:
    """A kept envd line, or None if it is not one (a torn last line, say)."""
    try:
        record = json.loads(raw)
        timestamp = datetime.fromisoformat(str(record["timestamp"]))
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(record, dict):
        return None
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return LogLine(timestamp, raw, record)


class SandboxLogs:
    """The envd lines of every sandbox this server pulled, kept with their bounds."""

    def __init__(
        self, directory: Path | None, *, max_bytes: int, retention: float, max_age: float
    ) -> None:
        self._dir = directory
        self.max_bytes = max_bytes
        self.retention = retention
        self.max_age = max_age
        self._locks: dict[str, asyncio.Lock] = {}
        self._cursors: dict[str, tuple[str, int]] = {}
        self._memory: dict[str, list[str]] = {}
        self._touched: dict[str, float] = {}  # without a directory: each one's last line
        self._frozen: set[str] = set()  # paused: envd cannot answer until resumed
        self._swept = 0.0

    # --- pull --------------------------------------------------------------------------

    def frozen(self, sandbox_id: str, frozen: bool) -> None:
        """Mark a sandbox paused (no pulls: its envd would not answer) or running."""
        if frozen:
            self._frozen.add(sandbox_id)
        else:
            self._frozen.discard(sandbox_id)

    async def pull(
        self, sandbox_id: str, client: httpx.AsyncClient, base_url: str, token: str | None
    ) -> None:
        """Fetch what envd logged since the last pull and keep it. A sandbox that does
        not answer (paused, gone, busy) keeps what it has: logs are never worth a
        failed request."""
        if sandbox_id in self._frozen:
            return
        async with self._lock(sandbox_id):
            headers = {"X-Access-Token": token} if token else {}
            cursor = self._cursors.get(sandbox_id)
            if cursor is None:
                cursor = await asyncio.to_thread(self._read_cursor, sandbox_id)
            epoch, after = cursor
            try:
                while True:
                    response = await client.get(
                        f"{base_url}/logs",
                        params={"after": after, "limit": PULL_PAGE},
                        headers=headers,
                        timeout=PULL_TIMEOUT,
                    )
                    response.raise_for_status()
                    page = response.json()
                    if page.get("epoch") != epoch and after:
                        # Another envd (a restart): its numbering starts over.
                        epoch, after = str(page.get("epoch")), 0
                        continue
                    epoch = str(page.get("epoch"))
                    lines = [str(line) for line in page.get("lines") or []]
                    if page.get("dropped"):
                        lines.insert(0, _dropped_line(int(page["dropped"]), lines))
                    after = int(page.get("next") or after)
                    if lines:
                        await asyncio.to_thread(self._append, sandbox_id, lines, (epoch, after))
                    self._cursors[sandbox_id] = (epoch, after)
                    if len(page.get("lines") or ()) < PULL_PAGE:
                        return
            except (httpx.HTTPError, ValueError, TypeError) as e:
                log.debug("logs of %s not pulled: %s", sandbox_id, e)
            except OSError as e:  # the data directory: full, say
                log.warning("logs of %s not kept: %s", sandbox_id, e)

    def closed(self, sandbox_id: str) -> None:
        """The sandbox is gone (its last pull done): let go of what pulling it needed;
        its kept lines stay until the retention ends."""
        self._frozen.discard(sandbox_id)
        self._cursors.pop(sandbox_id, None)
        lock = self._locks.get(sandbox_id)
        if lock is not None and not lock.locked():
            del self._locks[sandbox_id]

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    # --- keep --------------------------------------------------------------------------

    def _path(self, sandbox_id: str, suffix: str = SUFFIX) -> Path:
        assert self._dir is not None
        return self._dir / f"{sandbox_id}{suffix}"

    def _read_cursor(self, sandbox_id: str) -> tuple[str, int]:
        if self._dir is None:
            return ("", 0)
        try:
            epoch, _, after = self._path(sandbox_id, ".cursor").read_text().partition(" ")
            return (epoch, int(after))
        except (OSError, ValueError):
            return ("", 0)

    def _append(self, sandbox_id: str, lines: list[str], cursor: tuple[str, int]) -> None:
        """Keep `lines` (in a worker thread), then hold the sandbox to `max_bytes`."""
        if self._dir is None:
            kept = self._memory.setdefault(sandbox_id, [])
            kept.extend(lines)
            self._memory[sandbox_id] = _bounded(kept, self.max_bytes)
            self._touched[sandbox_id] = time.time()
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._path(sandbox_id)
        # No fsync: a crash loses the last lines, which a pull of envd's ring has again.
        # A lone surrogate (a request's `\ud800`) is written as that escape, which in a
        # JSON string is the same character again.
        with path.open("a", encoding="utf-8", errors="backslashreplace") as f:
            f.writelines(line + "\n" for line in lines)
            size = f.tell()
        if size > self.max_bytes:
            kept = _bounded(path.read_text(encoding="utf-8").splitlines(), self.max_bytes)
            tmp = self._path(sandbox_id, ".tmp")
            text = "".join(line + "\n" for line in kept)
            tmp.write_text(text, encoding="utf-8", errors="backslashreplace")
            os.replace(tmp, path)
        self._path(sandbox_id, ".cursor").write_text(f"{cursor[0]} {cursor[1]}")

    # --- read --------------------------------------------------------------------------

    async def read(
        self,
        sandbox_id: str,
        start: datetime | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[LogLine]:
        """The kept lines of a sandbox from `start` on (and within `max_age`), oldest
        first: all, or the oldest `limit` (the newest, with `newest`). Parsed in a worker
        thread, so a big file never holds the event loop."""
        oldest = datetime.fromtimestamp(time.time() - self.max_age, UTC)
        start = max(start, oldest) if start is not None else oldest
        return await asyncio.to_thread(self._read, sandbox_id, start, limit, newest)

    def _read(
        self, sandbox_id: str, start: datetime, limit: int | None = None, newest: bool = False
    ) -> list[LogLine]:
        if self._dir is None:
            raws: list[str] = list(self._memory.get(sandbox_id, ()))
        else:
            try:
                raws = self._path(sandbox_id).read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                return []
        floor = _iso(start)
        found: list[LogLine] = []
        # Lines are kept in the order envd wrote them, its clock's: the oldest (or the
        # newest) `limit` are the first (or last) ones that qualify.
        for raw in reversed(raws) if newest else raws:
            if limit is not None and len(found) >= limit:
                break
            # envd writes timestamps in one fixed-width form: compared as text, most
            # lines older than `start` are skipped without being parsed.
            stamp = _line_time(raw)
            if stamp is not None and stamp < floor:
                continue
            line = parse(raw)
            if line is not None and line.timestamp >= start:
                found.append(line)
        found.sort(key=lambda line: line.timestamp)
        return found

    # --- retention ---------------------------------------------------------------------

    def due_sweep(self) -> bool:
        """True at most once a minute (or per retention, if shorter): time to look for
        expired files."""
        now = time.monotonic()
        if now - self._swept < min(SWEEP_INTERVAL, self.retention):
            return False
        self._swept = now
        return True

    def expired(self) -> list[str]:
        """Sandboxes whose last line is older than the retention (live or not)."""
        limit = time.time() - self.retention
        if self._dir is None:
            return [sandbox_id for sandbox_id, at in self._touched.items() if at < limit]
        if not self._dir.is_dir():
            return []
        found = []
        for path in self._dir.glob(f"*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    found.append(path.name.removesuffix(SUFFIX))
        return found

    def delete(self, sandbox_ids: Iterable[str]) -> None:
        """Forget the logs of sandboxes that are gone (in a worker thread)."""
        for sandbox_id in sandbox_ids:
            self._cursors.pop(sandbox_id, None)
            self._memory.pop(sandbox_id, None)
            self._touched.pop(sandbox_id, None)
            self._locks.pop(sandbox_id, None)
            self._frozen.discard(sandbox_id)
            if self._dir is not None:
                for suffix in (SUFFIX, ".cursor", ".tmp"):
                    self._path(sandbox_id, suffix).unlink(missing_ok=True)


def _bounded(lines: list[str], max_bytes: int) -> list[str]:
    """The newest of `lines` that fit in three quarters of `max_bytes` (room to grow
    before the next trim)."""
    budget = max_bytes * 3 // 4
    kept: list[str] = []
    for line in reversed(lines):
        budget -= len(line) + 1
        if budget < 0:
            break
        kept.append(line)
    kept.reverse()
    return kept


def _dropped_line(count: int, lines: list[str]) -> str:
    """The warning that stands for lines envd's ring lost before they were pulled."""
    stamp = (_line_time(lines[0]) if lines else None) or _iso(datetime.now(UTC))
    record = {
        "level": "warn",
        "logger": SYSTEM_LOGGER,
        "event_type": "logs_dropped",
        "dropped": count,
        "message": f"{count} log lines were dropped before they were collected",
        "timestamp": stamp,
    }
    return json.dumps(record, separators=(",", ":"))
