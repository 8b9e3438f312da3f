"""Sandbox logs as E2B serves them: what a sandbox does through envd (processes, their
output and end, file reads and writes, failed calls) and its lifecycle events, read with
the v1 and v2 routes and with the E2B CLI's `sandbox logs` (`--level`, `--loggers`,
`--format json`, `--follow`), over a container-runtime `hearth serve` driven by the
real Python SDK."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import CommandExitException, PtySize, Sandbox

from .conftest import E2B_CLI_DIR, Hearth, run_e2b_cli, served_containers, team_key

pytestmark = pytest.mark.root

# How long a read of the CLI's output may wait before the test gives up on a hung CLI;
# no speed is asserted.
HANG_GUARD = 180


@pytest.fixture(scope="module")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-logs-") as info:
        yield info


@pytest.fixture(scope="module")
def api(hearth: Hearth) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hearth.api_url, headers={"X-API-Key": hearth.api_key}) as c:
        yield c


@pytest.fixture(scope="module")
def busy(hearth: Hearth) -> Iterator[Sandbox]:
    """A sandbox that ran commands (one failing, one refused), wrote and read a file."""
    sbx = Sandbox.create("base", timeout=600)
    try:
        sbx.commands.run("echo hello-out; echo hello-err >&2")
        with pytest.raises(CommandExitException):
            sbx.commands.run("echo about-to-fail; exit 3")
        with pytest.raises(Exception, match="does not exist"):
            sbx.commands.run("true", cwd="/no/such/dir")
        sbx.files.write("/tmp/note.txt", "hi")
        assert sbx.files.read("/tmp/note.txt") == "hi"
        watcher = sbx.files.watch_dir("/tmp")
        sbx.files.remove("/tmp/note.txt")
        watcher.stop()
        terminal = sbx.pty.create(PtySize(rows=24, cols=80))
        sbx.pty.kill(terminal.pid)
        yield sbx
    finally:
        sbx.kill()


def _v1(api: httpx.Client, sandbox_id: str, **params: Any) -> dict:
    response = api.get(f"/sandboxes/{sandbox_id}/logs", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _v2(api: httpx.Client, sandbox_id: str, **params: Any) -> list[dict]:
    response = api.get(f"/v2/sandboxes/{sandbox_id}/logs", params=params)
    assert response.status_code == 200, response.text
    return response.json()["logs"]


def _records(body: dict) -> list[dict]:
    return [json.loads(entry["line"]) for entry in body["logs"]]


def _ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


def test_v1_lines_are_e2b_json(api: httpx.Client, busy: Sandbox) -> None:
    body = _v1(api, busy.sandbox_id)
    records = _records(body)
    assert len(body["logEntries"]) == len(records)
    for record in records:
        assert record["level"] in ("debug", "info", "warn", "error")
        assert record["logger"] and record["message"] is not None and record["timestamp"]

    starts = [r for r in records if r.get("event_type") == "process_start"]
    hello = next(r for r in starts if "echo hello-out" in r["command"])
    assert hello["logger"] == "processSvc" and hello["user"] == "user"
    assert hello["cmd"] == "/bin/bash" and hello["pid"] > 0 and hello["pty"] is False
    output = {
        (r["stream"], r["message"]) for r in records if r.get("event_type") == "process_output"
    }
    assert {("stdout", "hello-out"), ("stderr", "hello-err"), ("stdout", "about-to-fail")} <= (
        output
    )
    ends = [r for r in records if r.get("event_type") == "process_end"]
    assert {(r["exit_code"], r["status"]) for r in ends} >= {(0, "exit status 0")}
    failed = next(r for r in ends if r["exit_code"] == 3)
    assert failed["error"] == "exit status 3" and failed["level"] == "info"

    refused = [r for r in records if r["level"] == "error" and r["logger"] == "processSvc"]
    assert any("/no/such/dir" in r.get("error", "") for r in refused), refused
    writes = [r for r in records if r["message"] == "File write"]
    assert (
        writes and writes[0]["path"] == "/tmp/note.txt" and writes[0]["logger"] == ("filesystemSvc")
    )
    assert any(r["message"] == "File read" for r in records)
    calls = {r["message"]: r for r in records if r.get("method", "").startswith("POST /file")}
    assert calls["Filesystem remove"]["request"] == {"path": "/tmp/note.txt"}
    assert calls["Filesystem createWatcher"]["level"] == "info"
    terminal = next(r for r in starts if r["pty"])
    assert terminal["cmd"] == "/bin/bash" and terminal["logger"] == "processSvc"
    created = [r for r in records if r.get("event_type") == "sandbox.created"]
    assert created and created[0]["logger"] == "system"

    # The entries carry the same lines, their fields as strings.
    for entry in body["logEntries"]:
        assert all(isinstance(v, str) for v in entry["fields"].values())
    entry = next(e for e in body["logEntries"] if e["message"] == "hello-err")
    assert entry["level"] == "info" and entry["fields"]["stream"] == "stderr"
    assert entry["fields"]["pid"] == str(hello["pid"])

    # `start` (ms) keeps what is at or after it; `limit` takes the oldest.
    middle = body["logs"][len(body["logs"]) // 2]["timestamp"]
    later = _v1(api, busy.sandbox_id, start=_ms(middle))["logs"]
    assert later and all(_ms(e["timestamp"]) >= _ms(middle) for e in later)
    assert len(later) < len(body["logs"])
    assert _v1(api, busy.sandbox_id, limit=3)["logs"] == body["logs"][:3]


def test_v2_filters_and_pages(api: httpx.Client, busy: Sandbox) -> None:
    every = _v2(api, busy.sandbox_id, direction="forward")
    assert every and all(isinstance(v, str) for e in every for v in e["fields"].values())
    stamps = [e["timestamp"] for e in every]
    assert stamps == sorted(stamps, key=_ms)

    errors = _v2(api, busy.sandbox_id, level="error")
    assert errors and {e["level"] for e in errors} == {"error"}
    warn_up = _v2(api, busy.sandbox_id, level="warn")
    assert {e["level"] for e in warn_up} <= {"warn", "error"} and len(warn_up) >= len(errors)
    assert len(_v2(api, busy.sandbox_id, level="debug")) >= len(_v2(api, busy.sandbox_id))

    found = _v2(api, busy.sandbox_id, search="hello-err")
    assert found and all("hello-err" in e["message"] for e in found)
    assert _v2(api, busy.sandbox_id, search="HELLO-ERR") == []  # case-sensitive

    first = _v2(api, busy.sandbox_id, direction="forward", limit=2)
    assert first == every[:2]
    newest = _v2(api, busy.sandbox_id, direction="backward", limit=2)
    assert newest == _v2(api, busy.sandbox_id, limit=1000)[-2:]
    cursor = _ms(every[len(every) // 2]["timestamp"])
    after = _v2(api, busy.sandbox_id, direction="forward", cursor=cursor)
    before = _v2(api, busy.sandbox_id, direction="backward", cursor=cursor)
    assert after and all(_ms(e["timestamp"]) >= cursor for e in after)
    assert before and all(_ms(e["timestamp"]) <= cursor for e in before)
    assert _v2(api, busy.sandbox_id, limit=0) == []


@pytest.mark.parametrize(
    ("route", "params"),
    [
        ("/v2/sandboxes/{}/logs", {"level": "loud"}),
        ("/v2/sandboxes/{}/logs", {"direction": "sideways"}),
        ("/v2/sandboxes/{}/logs", {"limit": 1001}),
        ("/v2/sandboxes/{}/logs", {"cursor": -1}),
        ("/v2/sandboxes/{}/logs", {"search": "x" * 257}),
        ("/sandboxes/{}/logs", {"limit": -1}),
        ("/sandboxes/{}/logs", {"start": "soon"}),
    ],
)
def test_bad_parameters_are_400(api: httpx.Client, busy: Sandbox, route: str, params: dict) -> None:
    response = api.get(route.format(busy.sandbox_id), params=params)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 400 and response.json()["message"]


def test_unknown_and_foreign_sandboxes_are_404(
    api: httpx.Client, hearth: Hearth, busy: Sandbox
) -> None:
    for route in ("/sandboxes/{}/logs", "/v2/sandboxes/{}/logs"):
        missing = api.get(route.format("nosuchsandbox0000000"))
        assert missing.status_code == 404 and missing.json()["code"] == 404
        foreign = httpx.get(
            hearth.api_url + route.format(busy.sandbox_id),
            headers={"X-API-Key": team_key(hearth, f"logs-{uuid.uuid4().hex[:8]}")},
        )
        assert foreign.status_code == 404, foreign.text
        assert busy.sandbox_id in foreign.json()["message"]


def test_killed_sandbox_logs_are_kept(api: httpx.Client, hearth: Hearth, e2b_cli: Path) -> None:
    sbx = Sandbox.create("base", timeout=120)
    sbx.commands.run("echo said-before-the-kill")
    # Nobody read the logs while it ran: the kill itself takes them from envd.
    sbx.kill()
    records = _records(_v1(api, sbx.sandbox_id))
    assert any(r["message"] == "said-before-the-kill" for r in records)
    killed = [r for r in records if r.get("event_type") == "sandbox.killed"]
    assert killed and killed[0]["reason"] == "killed" and killed[0]["logger"] == "system"
    printed = run_e2b_cli(e2b_cli, hearth, "sandbox", "logs", sbx.sandbox_id)
    assert "said-before-the-kill" in printed and "sandbox.killed" in printed


def test_logs_are_kept_across_a_pause(api: httpx.Client, hearth: Hearth) -> None:
    sbx = Sandbox.create("base", timeout=300)
    try:
        sbx.commands.run("echo before-the-pause")
        sbx.pause()
        # Taken from envd before it froze; read while it is paused.
        paused = _records(_v1(api, sbx.sandbox_id))
        assert any(r["message"] == "before-the-pause" for r in paused)
        assert any(r.get("event_type") == "sandbox.paused" for r in paused)
        resumed = Sandbox.connect(sbx.sandbox_id)
        resumed.commands.run("echo after-the-resume")
        messages = [r["message"] for r in _records(_v1(api, sbx.sandbox_id))]
        assert messages.index("before-the-pause") < messages.index("after-the-resume")
        assert messages.count("before-the-pause") == 1
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_a_full_ring_says_what_it_dropped(api: httpx.Client, hearth: Hearth) -> None:
    sbx = Sandbox.create("base", timeout=300)
    try:
        # ~100k output lines overflow envd's ring before the next pull.
        sbx.commands.run("seq 1 100000")
        logs = _v2(api, sbx.sandbox_id, direction="forward", level="warn")
        dropped = [e for e in logs if e["fields"].get("event_type") == "logs_dropped"]
        assert dropped and int(dropped[0]["fields"]["dropped"]) > 0
        newest = _v2(api, sbx.sandbox_id, search="100000")
        assert any(e["message"] == "100000" for e in newest)
    finally:
        sbx.kill()


def test_killed_sandbox_logs_go_after_the_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_SANDBOX_LOG_RETENTION", "1")
    with served_containers("hearth-logs-retention-") as short:
        data = Path(short.database_url.removeprefix("sqlite:///")).parent / "sandbox-logs"
        headers = {"X-API-Key": short.api_key}
        sbx = Sandbox.create("base", timeout=120)
        sbx.commands.run("echo soon-forgotten")
        sbx.kill()
        assert (data / f"{sbx.sandbox_id}.jsonl").exists()
        url = f"{short.api_url}/sandboxes/{sbx.sandbox_id}/logs"
        for _ in range(HANG_GUARD * 2):
            if not (data / f"{sbx.sandbox_id}.jsonl").exists():
                break
            threading.Event().wait(0.5)
        assert not any(p.name.startswith(sbx.sandbox_id) for p in data.iterdir())
        records = _records(httpx.get(url, headers=headers).json())
        assert not any(r["message"] == "soon-forgotten" for r in records)
        assert {r["logger"] for r in records} == {"system"}  # the store's events stay


def test_cli_prints_and_filters(e2b_cli: Path, hearth: Hearth, busy: Sandbox) -> None:
    pretty = run_e2b_cli(e2b_cli, hearth, "sandbox", "logs", busy.sandbox_id)
    assert f"Logs for sandbox {busy.sandbox_id}" in pretty
    assert "hello-out" in pretty and "hello-err" in pretty and "File write" in pretty

    args = ("sandbox", "logs", busy.sandbox_id, "--format", "json")
    lines = _printed(run_e2b_cli(e2b_cli, hearth, *args))
    assert {"process", "filesystem", "system"} <= {line["logger"] for line in lines}
    assert {line["level"] for line in lines} <= {"INFO", "WARN", "ERROR"}  # INFO and up

    errors = _printed(run_e2b_cli(e2b_cli, hearth, *args, "--level", "ERROR"))
    assert errors and {line["level"] for line in errors} == {"ERROR"}
    assert any("/no/such/dir" in line.get("error", "") for line in errors)

    only = _printed(run_e2b_cli(e2b_cli, hearth, *args, "--loggers", "filesystem"))
    assert only and {line["logger"] for line in only} == {"filesystem"}

    shown = _printed(run_e2b_cli(e2b_cli, hearth, *args, "--level", "DEBUG"))
    assert any(line["level"] == "DEBUG" for line in shown)


def _printed(out: str) -> list[dict]:
    """The lines `e2b sandbox logs --format json` printed (it starts with an empty one),
    their level upper-cased (the CLI's own `level` is overwritten by the line's)."""
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    for line in lines:
        line["level"] = line["level"].strip().upper()
    return lines


def test_cli_follow_prints_new_lines_and_ends_with_the_sandbox(
    e2b_cli: Path, hearth: Hearth
) -> None:
    sbx = Sandbox.create("base", timeout=300)
    env = {**os.environ, **hearth.env(), "HOME": str(E2B_CLI_DIR), "NO_COLOR": "1"}
    cli = subprocess.Popen(
        [str(e2b_cli), "sandbox", "logs", sbx.sandbox_id, "--follow", "--format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def read() -> None:
        assert cli.stdout is not None
        for line in cli.stdout:
            printed.put(line)
        printed.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        # Its first page is there (the create) before anything else is run.
        assert "sandbox.created" in _next_line(printed, "sandbox.created")
        marker = f"written-while-following-{uuid.uuid4().hex[:6]}"
        sbx.commands.run(f"echo {marker}")
        assert json.loads(_next_line(printed, marker))["logger"] == "process"
        sbx.kill()
        cli.wait(timeout=HANG_GUARD)  # it ends by itself once the sandbox is gone
        assert cli.returncode == 0, cli.stderr.read() if cli.stderr else ""
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        sbx.kill()  # False when the test killed it already


def _next_line(printed: queue.SimpleQueue[str | None], needle: str) -> str:
    """The first line the CLI prints that holds `needle`."""
    while True:
        line = printed.get(timeout=HANG_GUARD)
        assert line is not None, f"the CLI stopped before printing {needle!r}"
        if needle in line:
            return line
