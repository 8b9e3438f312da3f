"""envd's structured log: E2B-shaped JSON lines in a bounded ring the host pulls.

Every line is one JSON object as E2B's envd writes it with zerolog: `level`
(debug|info|warn|error), `logger` (`processSvc`, `filesystemSvc`), `message`,
`timestamp` (RFC 3339, UTC) and the event's own fields (`event_type`, `pid`, ...).

The lines stay in memory: appending costs a `json.dumps` and a lock, never a write or an
fsync on the hot path. The ring is bounded in bytes; when the host has not pulled for so
long that the ring overflows, the oldest lines go and the next pull says how many. The
host reads the ring with `GET /logs?after=SEQ` (the node keeps what it pulled, with its
own retention): one way for every runtime, container or microVM, over the TCP port the
node already talks to.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

# Bytes of lines kept between two pulls; the host pulls on every read and before a
# sandbox is paused or killed.
MAX_RING_BYTES = 1 << 20
MAX_PULL_LINES = 5000
PROCESS = "processSvc"
FILESYSTEM = "filesystemSvc"
# A request logged beside an RPC call is cut at this size (a PTY's input, say).
MAX_REQUEST_CHARS = 1024


def _timestamp() -> str:
    import time

    ns = time.time_ns()
    secs, nanos = divmod(ns, 1_000_000_000)
    t = time.gmtime(secs)
    return f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T{t[3]:02d}:{t[4]:02d}:{t[5]:02d}.{nanos // 1000:06d}Z"


class LogRing:
    """The bounded, thread-safe sequence of log lines; each line has a sequence number
    (from 1) so that a reader asks for what follows the last one it has."""

    def __init__(self, max_bytes: int = MAX_RING_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lines: deque[tuple[int, str]] = deque()
        self._bytes = 0
        self._last = 0  # sequence number of the newest line
        self._lock = threading.Lock()
        self._epoch: str | None = None

    @property
    def epoch(self) -> str:
        """Names this ring (this envd process): a reader that sees another epoch starts
        over from sequence 0."""
        if self._epoch is None:
            import os

            self._epoch = os.urandom(8).hex()
        return self._epoch

    def emit(self, level: str, logger: str, message: str, **fields: Any) -> None:
        import json

        record = {"level": level, "logger": logger, **fields, "message": message}
        record["timestamp"] = _timestamp()
        try:
            line = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str)
        except (TypeError, ValueError, RecursionError):
            return  # a line that cannot be written must not fail what it describes
        with self._lock:
            self._last += 1
            self._lines.append((self._last, line))
            self._bytes += len(line)
            while self._bytes > self.max_bytes and len(self._lines) > 1:
                self._bytes -= len(self._lines.popleft()[1])

    def since(self, after: int, limit: int = MAX_PULL_LINES) -> dict[str, Any]:
        """The lines after sequence `after` (at most `limit`), `next` (what to ask after
        next), and `dropped`: lines after `after` that the ring no longer holds."""
        with self._lock:
            if after > self._last:  # a reader of an earlier envd: start over
                after = 0
            first = self._lines[0][0] if self._lines else self._last + 1
            dropped = max(first - after - 1, 0)
            picked = [(seq, line) for seq, line in self._lines if seq > after][:limit]
            last = picked[-1][0] if picked else max(after, first - 1)
        lines = [line for _, line in picked]
        return {"epoch": self.epoch, "lines": lines, "next": last, "dropped": dropped}


RING = LogRing()


def emit(level: str, logger: str, message: str, **fields: Any) -> None:
    """Add one line to envd's log."""
    RING.emit(level, logger, message, **fields)


def rpc_logger(path: str) -> str:
    """The logger of a Connect call's path (`/process.Process/Start` -> processSvc)."""
    return PROCESS if path.startswith("/process.") else FILESYSTEM


def rpc_name(path: str) -> str:
    """How E2B's envd names a call in its message: `Process start`."""
    service, _, method = path.strip("/").partition("/")
    service = service.rpartition(".")[2]
    return f"{service} {method[:1].lower()}{method[1:]}"


def short_request(message: object) -> object:
    """The request as logged beside its call: whole when small, else only its size.
    What is typed into a process (`input`: a terminal's keystrokes, passwords among
    them) is never logged, only its size."""
    import json

    if isinstance(message, dict) and "input" in message:
        typed = json.dumps(message["input"], separators=(",", ":"), default=str)
        message = {**message, "input": {"bytes": len(typed)}}
    text = json.dumps(message, separators=(",", ":"), default=str)
    return message if len(text) <= MAX_REQUEST_CHARS else {"bytes": len(text)}


def serve(req: Any) -> Any:
    """`GET /logs?after=SEQ&limit=N`: the lines after SEQ, as `LogRing.since` gives them."""
    from hearth.envd.http11 import Response

    try:
        after = int(req.arg("after") or 0)
        limit = int(req.arg("limit") or MAX_PULL_LINES)
    except ValueError:
        return Response.error(400, "after and limit must be integers")
    return Response.json(200, RING.since(max(after, 0), min(max(limit, 1), MAX_PULL_LINES)))


# Output of one process that is logged, stdout and stderr together, and the longest line
# logged whole: E2B's envd bounds both the same way.
MAX_PROCESS_OUTPUT_BYTES = 2 << 20
MAX_OUTPUT_LINE_BYTES = 64 << 10
TRUNCATED = "[output truncated: command exceeded log capture limit]"


class OutputBudget:
    """What is left of one process's output allowance, shared by its streams (one pump
    thread writes both, so no lock)."""

    def __init__(self) -> None:
        self.remaining = MAX_PROCESS_OUTPUT_BYTES
        self.truncated = False

    def spend(self, pid: int, size: int) -> bool:
        """True if a line of `size` bytes may be logged; the truncation marker once."""
        if self.remaining <= 0:
            if not self.truncated:
                self.truncated = True
                emit("warn", PROCESS, TRUNCATED, event_type="process_output", pid=pid)
            return False
        self.remaining -= size
        return True


class OutputLines:
    """Turns one stream's chunks into one log line per line of output."""

    def __init__(self, pid: int, stream: str, budget: OutputBudget) -> None:
        self.pid = pid
        self.stream = stream
        self.budget = budget
        self.pending = b""

    def write(self, chunk: bytes) -> None:
        data = self.pending + chunk
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._line(data[start:end])
            start = end + 1
        rest = data[start:]
        while len(rest) >= MAX_OUTPUT_LINE_BYTES:  # a line without end, in pieces
            self._line(rest[:MAX_OUTPUT_LINE_BYTES])
            rest = rest[MAX_OUTPUT_LINE_BYTES:]
        self.pending = rest

    def flush(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = b""

    def _line(self, line: bytes) -> None:
        line = line.removesuffix(b"\r")[:MAX_OUTPUT_LINE_BYTES]
        if not line or not self.budget.spend(self.pid, len(line)):
            return
        emit(
            "info",
            PROCESS,
            line.decode("utf-8", "replace"),
            event_type="process_output",
            stream=self.stream,
            pid=self.pid,
        )


def log_files(req: Any, resp: Any) -> None:
    """One line per `/files` read or write, as E2B's envd logs them ("File read" /
    "File write"): info, or error with the status when it failed."""
    fields: dict[str, Any] = {"method": f"{req.method} {req.path}"}
    for name in ("path", "username"):
        value = req.arg(name)
        if value is not None:
            fields[name] = value
    level = "info"
    if resp.status >= 400:
        level = "error"
        fields["error_code"] = resp.status
        if isinstance(resp.body, bytes) and len(resp.body) < 4096:
            import contextlib
            import json

            with contextlib.suppress(ValueError, AttributeError):
                fields["error"] = json.loads(resp.body).get("message", "")
    message = "File write" if req.method == "POST" else "File read"
    emit(level, FILESYSTEM, message, **fields)
