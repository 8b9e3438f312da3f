"""The E2B CLI's sandbox commands against `hearth serve`, as a user runs them: `list`
(state and metadata filters, json), `info`, `exec` (exit code, stderr, env, cwd, user,
piped stdin), `pause`, `resume`, `connect` (an interactive terminal through a pty) and
`kill` (by id and `--all` with a metadata filter)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import Sandbox

from .conftest import Hearth, e2b_cli_env, run_e2b_cli, served_containers

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-cli-sbx-") as info:
        yield info


@pytest.fixture
def sandbox(hearth: Hearth) -> Iterator[Sandbox]:
    sbx = Sandbox.create("base", metadata={"suite": "cli-sandboxes"})
    yield sbx
    Sandbox.kill(sbx.sandbox_id)


def _exec(
    e2b_cli: Path, hearth: Hearth, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = e2b_cli_env(hearth)
    return subprocess.run(
        [str(e2b_cli), "sandbox", "exec", *args],
        env=env,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )


def _listed(e2b_cli: Path, hearth: Hearth, *filters: str) -> dict[str, dict]:
    out = run_e2b_cli(e2b_cli, hearth, "sandbox", "list", "-f", "json", *filters)
    return {s["sandboxId"]: s for s in json.loads(out)}


def test_list_and_info_show_the_sandbox(e2b_cli: Path, hearth: Hearth, sandbox: Sandbox) -> None:
    listed = _listed(e2b_cli, hearth)
    assert sandbox.sandbox_id in listed
    assert listed[sandbox.sandbox_id]["metadata"] == {"suite": "cli-sandboxes"}
    assert sandbox.sandbox_id in _listed(e2b_cli, hearth, "-m", "suite=cli-sandboxes")
    assert sandbox.sandbox_id not in _listed(e2b_cli, hearth, "-m", "suite=other")
    assert sandbox.sandbox_id not in _listed(e2b_cli, hearth, "-s", "paused")

    pretty = run_e2b_cli(e2b_cli, hearth, "sandbox", "list")
    assert sandbox.sandbox_id in pretty

    info = json.loads(
        run_e2b_cli(e2b_cli, hearth, "sandbox", "info", sandbox.sandbox_id, "-f", "json")
    )
    assert info["sandboxId"] == sandbox.sandbox_id
    assert info["state"] == "running"
    assert info["metadata"] == {"suite": "cli-sandboxes"}


def test_info_of_an_unknown_sandbox_fails(e2b_cli: Path, hearth: Hearth) -> None:
    env = e2b_cli_env(hearth)
    done = subprocess.run(
        [str(e2b_cli), "sandbox", "info", "inotexist0000000000000"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert done.stderr == "Sandbox inotexist0000000000000 wasn't found\n"


def test_exec_runs_a_command_and_returns_its_exit_code(
    e2b_cli: Path, hearth: Hearth, sandbox: Sandbox
) -> None:
    done = _exec(e2b_cli, hearth, sandbox.sandbox_id, "sh", "-c", "echo out; echo err >&2; exit 3")
    # The CLI prints the end event's error as E2B's envd words it (Go's ExitError).
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\nexit status 3\n")

    done = _exec(
        e2b_cli, hearth, "-e", "GREETING=hi there", "-c", "/tmp", "-u", "root",
        sandbox.sandbox_id, "sh", "-c", 'echo "$GREETING"; pwd; whoami',
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hi there", "/tmp", "root"]


def test_exec_passes_piped_stdin(e2b_cli: Path, hearth: Hearth, sandbox: Sandbox) -> None:
    done = _exec(e2b_cli, hearth, sandbox.sandbox_id, "wc", "-l", stdin="a\nb\nc\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_pause_and_resume_keep_the_sandbox(e2b_cli: Path, hearth: Hearth, sandbox: Sandbox) -> None:
    sandbox.files.write("/tmp/kept.txt", "before the pause")
    run_e2b_cli(e2b_cli, hearth, "sandbox", "pause", sandbox.sandbox_id)
    assert sandbox.sandbox_id in _listed(e2b_cli, hearth, "-s", "paused")
    assert sandbox.sandbox_id not in _listed(e2b_cli, hearth)
    info = json.loads(
        run_e2b_cli(e2b_cli, hearth, "sandbox", "info", sandbox.sandbox_id, "-f", "json")
    )
    assert info["state"] == "paused"

    run_e2b_cli(e2b_cli, hearth, "sandbox", "resume", sandbox.sandbox_id)
    assert sandbox.sandbox_id in _listed(e2b_cli, hearth, "-s", "running")
    done = _exec(e2b_cli, hearth, sandbox.sandbox_id, "cat", "/tmp/kept.txt")
    assert (done.returncode, done.stdout) == (0, "before the pause")


def test_connect_opens_a_terminal(e2b_cli: Path, hearth: Hearth, sandbox: Sandbox) -> None:
    env = {**e2b_cli_env(hearth), "TERM": "xterm"}
    controller, terminal = pty.openpty()
    cli = subprocess.Popen(
        [str(e2b_cli), "sandbox", "connect", sandbox.sandbox_id],
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    try:
        seen = _read_until(controller, b"$", limit_bytes=1 << 20, process=cli)
        os.write(controller, b"echo connected-$((40 + 2))\r")
        seen += _read_until(controller, b"connected-42", limit_bytes=1 << 20, process=cli)
        os.write(controller, b"exit\r")
        assert cli.wait() == 0, seen.decode(errors="replace")
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        os.close(controller)
    assert sandbox.is_running()  # leaving the terminal leaves the sandbox running


def _read_until(fd: int, wanted: bytes, *, limit_bytes: int, process: subprocess.Popen) -> bytes:
    """What the terminal shows until `wanted` appears; fails if the CLI exits first or
    prints more than `limit_bytes` without it (a size bound, not a time limit)."""
    seen = b""
    while wanted not in seen:
        assert len(seen) < limit_bytes, seen[-2000:].decode(errors="replace")
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            assert process.poll() is None, f"the CLI exited: {seen.decode(errors='replace')}"
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the CLI closed the terminal
            chunk = b""
        assert chunk, f"the terminal closed: {seen.decode(errors='replace')}"
        seen += chunk
    return seen


def test_kill_by_id_and_by_metadata(e2b_cli: Path, hearth: Hearth) -> None:
    one = Sandbox.create("base", metadata={"batch": "one"})
    two = Sandbox.create("base", metadata={"batch": "two"})
    three = Sandbox.create("base", metadata={"batch": "two"})
    run_e2b_cli(e2b_cli, hearth, "sandbox", "kill", one.sandbox_id)
    listed = _listed(e2b_cli, hearth)
    assert one.sandbox_id not in listed
    assert {two.sandbox_id, three.sandbox_id} <= listed.keys()

    run_e2b_cli(e2b_cli, hearth, "sandbox", "kill", "--all", "-m", "batch=two")
    listed = _listed(e2b_cli, hearth)
    assert not {two.sandbox_id, three.sandbox_id} & listed.keys()
    assert not one.is_running() and not two.is_running() and not three.is_running()


def test_create_detached_with_a_timeout_and_lifecycle(e2b_cli: Path, hearth: Hearth) -> None:
    out = run_e2b_cli(
        e2b_cli, hearth, "sandbox", "create", "base", "-d",
        "--timeout", "120", "--lifecycle.ontimeout", "pause", "--lifecycle.autoresume",
    )  # fmt: skip
    sandbox_id = out.strip().splitlines()[-1]
    try:
        info = Sandbox.get_info(sandbox_id)
        assert info.state.value == "running"
        lifetime = (info.end_at - info.started_at).total_seconds()
        assert 110 <= lifetime <= 130, lifetime  # the timeout asked for, not the default
        assert info.lifecycle == {"on_timeout": "pause", "auto_resume": True}
    finally:
        run_e2b_cli(e2b_cli, hearth, "sandbox", "kill", sandbox_id)
