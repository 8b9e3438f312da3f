"""envd's log ring and output lines, and the server's keeper of pulled sandbox logs:
bounds, sequence numbers, what is dropped and said to be, retention."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hearth.api._logs import LogLine, SandboxLogs, parse
from hearth.envd import logs


def _messages(page: dict) -> list[str]:
    return [json.loads(line)["message"] for line in page["lines"]]


def test_ring_lines_are_e2b_json_with_sequence_numbers() -> None:
    ring = logs.LogRing()
    ring.emit("info", logs.PROCESS, "Process with pid 7 started", event_type="process_start", pid=7)
    ring.emit("error", logs.FILESYSTEM, "File read", path="/x", error_code=404)
    page = ring.since(0)
    first = json.loads(page["lines"][0])
    assert first["level"] == "info" and first["logger"] == "processSvc"
    assert first["pid"] == 7 and first["event_type"] == "process_start"
    assert datetime.fromisoformat(first["timestamp"]).tzinfo is not None
    assert list(first)[-1] == "timestamp"  # what the keeper reads without parsing
    assert page["next"] == 2 and page["dropped"] == 0
    again = ring.since(1)
    assert _messages(again) == ["File read"] and again["next"] == 2
    assert ring.since(2)["lines"] == [] and ring.since(2)["next"] == 2


def test_ring_is_bounded_and_says_what_it_dropped() -> None:
    ring = logs.LogRing(max_bytes=2000)
    for i in range(100):
        ring.emit("info", logs.PROCESS, f"line {i}")
    page = ring.since(0)
    assert sum(len(line) for line in page["lines"]) <= 2000
    assert page["next"] == 100 and _messages(page)[-1] == "line 99"
    assert page["dropped"] == 100 - len(page["lines"])
    assert ring.since(0, limit=3)["next"] == page["dropped"] + 3
    # A reader ahead of this ring (it read an earlier envd) starts over.
    assert ring.since(10_000)["next"] == 100


def test_output_is_logged_line_by_line_within_a_budget() -> None:
    before = logs.RING.since(0)["next"]
    budget = logs.OutputBudget()
    out = logs.OutputLines(42, "stdout", budget)
    out.write(b"one\r\ntw")
    out.write(b"o\n\nthree")
    out.flush()
    page = logs.RING.since(before)
    records = [json.loads(line) for line in page["lines"]]
    assert [r["message"] for r in records] == ["one", "two", "three"]
    assert {(r["stream"], r["pid"], r["event_type"]) for r in records} == {
        ("stdout", 42, "process_output")
    }

    budget.remaining = 5
    err = logs.OutputLines(42, "stderr", budget)
    err.write(b"12345678\nmore\nand more\n")
    tail = [json.loads(line) for line in logs.RING.since(page["next"])["lines"]]
    assert [r["message"] for r in tail] == ["12345678", logs.TRUNCATED]
    assert tail[-1]["level"] == "warn"


def test_an_endless_line_is_cut_into_pieces() -> None:
    before = logs.RING.since(0)["next"]
    out = logs.OutputLines(1, "stdout", logs.OutputBudget())
    out.write(b"x" * (logs.MAX_OUTPUT_LINE_BYTES * 2 + 10))
    out.flush()
    sizes = [len(json.loads(line)["message"]) for line in logs.RING.since(before)["lines"]]
    assert sizes == [logs.MAX_OUTPUT_LINE_BYTES, logs.MAX_OUTPUT_LINE_BYTES, 10]


def test_rpc_names_as_e2b_writes_them() -> None:
    assert logs.rpc_name("/filesystem.Filesystem/MakeDir") == "Filesystem makeDir"
    assert logs.rpc_logger("/process.Process/Start") == "processSvc"
    assert logs.rpc_logger("/filesystem.Filesystem/Stat") == "filesystemSvc"
    assert logs.short_request({"path": "x" * 5000}) == {"bytes": 5011}
    typed = {"process": {"pid": 3}, "input": {"pty": "c2VjcmV0"}}
    assert logs.short_request(typed) == {"process": {"pid": 3}, "input": {"bytes": 18}}


def _line(message: str, when: datetime, level: str = "info") -> str:
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    record = {"level": level, "logger": "processSvc", "pid": 3, "message": message}
    record["timestamp"] = stamp
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)  # as envd writes


def test_keeper_bounds_reads_and_forgets(tmp_path: Path) -> None:
    kept = SandboxLogs(tmp_path, max_bytes=4096, retention=60, max_age=3600)
    now = datetime.now(UTC)
    old = [_line(f"old {i}", now - timedelta(hours=2)) for i in range(3)]
    fresh = [_line(f"new {i:03d}", now + timedelta(milliseconds=i)) for i in range(100)]
    kept._append("sbx", old + fresh, ("epoch", 103))
    assert (tmp_path / "sbx.jsonl").stat().st_size <= 4096
    assert kept._read_cursor("sbx") == ("epoch", 103)

    lines = asyncio.run(kept.read("sbx"))
    assert lines and all(line.message.startswith("new") for line in lines)  # max_age
    assert lines[-1].message == "new 099"  # the oldest went first
    assert [line.timestamp for line in lines] == sorted(line.timestamp for line in lines)
    since = asyncio.run(kept.read("sbx", now + timedelta(milliseconds=95)))
    assert [line.message for line in since] == [f"new {i:03d}" for i in range(95, 100)]
    assert since[0].fields() == {
        "logger": "processSvc",
        "pid": "3",
        "timestamp": since[0].record["timestamp"],
    }

    oldest = asyncio.run(kept.read("sbx", limit=2))
    newest = asyncio.run(kept.read("sbx", limit=2, newest=True))
    assert [line.message for line in oldest] == [lines[0].message, lines[1].message]
    assert [line.message for line in newest] == ["new 098", "new 099"]

    assert kept.expired() == []
    past = time.time() - 120
    os.utime(tmp_path / "sbx.jsonl", (past, past))
    assert kept.expired() == ["sbx"]
    kept.delete(["sbx"])
    assert list(tmp_path.iterdir()) == []
    assert asyncio.run(kept.read("sbx")) == []


def test_keeper_without_a_directory_keeps_lines_in_memory() -> None:
    kept = SandboxLogs(None, max_bytes=1000, retention=60, max_age=3600)
    now = datetime.now(UTC)
    kept._append("sbx", [_line(f"m{i}", now) for i in range(50)], ("e", 50))
    lines = asyncio.run(kept.read("sbx"))
    assert 0 < len(lines) < 50 and lines[-1].message == "m49"
    assert sum(len(line.raw) + 1 for line in lines) <= 1000
    assert kept.expired() == []
    kept.retention = -1.0  # every line is past it now
    assert kept.expired() == ["sbx"]
    kept.delete(kept.expired())
    assert asyncio.run(kept.read("sbx")) == [] and kept.expired() == []


def test_lines_parse_levels_and_fields() -> None:
    line = parse(_line("x", datetime.now(UTC), level="warning"))
    assert isinstance(line, LogLine) and line.level == "warn"
    assert parse("{not json") is None and parse('{"message": "no time"}') is None
    stamp = "2026-01-01T00:00:00Z"
    nested = parse(json.dumps({"level": "debug", "ok": True, "r": {"a": 1}, "timestamp": stamp}))
    assert nested is not None
    assert nested.fields() == {"ok": "true", "r": '{"a":1}', "timestamp": "2026-01-01T00:00:00Z"}


def test_a_lone_surrogate_is_kept_as_its_escape(tmp_path: Path) -> None:
    kept = SandboxLogs(tmp_path, max_bytes=1 << 20, retention=60, max_age=3600)
    odd = json.loads('"cwd \\ud800"')  # what JSON may carry and UTF-8 cannot
    kept._append("sbx", [_line(odd, datetime.now(UTC))], ("e", 1))
    assert [line.message for line in asyncio.run(kept.read("sbx"))] == [odd]
