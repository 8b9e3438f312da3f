"""`pty` of the real Python SDK (sync and async) against envd (spec §3.5 item 9)."""

from __future__ import annotations

import asyncio

import pytest
from e2b import AsyncSandbox, CommandExitException, PtySize, Sandbox

from .conftest import HOME

pytestmark = pytest.mark.root

# A bound on each PTY stream so a missing byte fails the test instead of hanging it.
PTY_TIMEOUT = 30
# The shell computes the marker, so the echoed input never contains it.
PROBE = b"echo $((6*7))xyz\n"
MARK = b"42xyz"


def read_until(handle, marker: bytes) -> bytes:
    """PTY bytes from `handle` up to and including the first `marker`."""
    buf = b""
    for _, _, pty in handle:
        if pty:
            buf += pty
            if marker in buf:
                return buf
    raise AssertionError(f"PTY stream ended before {marker!r}; got {buf!r}")


def test_create_input_echo_and_exit(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=PTY_TIMEOUT)
    assert handle.pid > 0
    sandbox.pty.send_stdin(handle.pid, PROBE)
    out = read_until(handle, MARK)
    assert b"$((6*7))xyz" in out  # the terminal echoes the input
    sandbox.pty.send_stdin(handle.pid, b"exit\n")
    result = handle.wait()
    assert result.exit_code == 0


def test_pty_runs_as_user_in_home_with_term(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=PTY_TIMEOUT)
    sandbox.pty.send_stdin(handle.pid, b'echo "W=$(whoami):$(pwd):$TERM:E"\n')
    out = read_until(handle, b":E\r\n")
    assert f"W=user:{HOME}:xterm-256color:E".encode() in out
    sandbox.pty.kill(handle.pid)


def test_pty_is_a_terminal(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=PTY_TIMEOUT)
    sandbox.pty.send_stdin(handle.pid, b"[ -t 0 ] && [ -t 1 ] && echo TT$((1+1))Y\n")
    read_until(handle, b"TT2Y")
    sandbox.pty.kill(handle.pid)


def test_pty_size_and_resize(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=PTY_TIMEOUT)
    # The marker ends in the shell's arithmetic, so the echoed command line never matches.
    sandbox.pty.send_stdin(handle.pid, b"echo S$(stty size)E$((1+1))\n")
    assert b"S24 80E2" in read_until(handle, b"E2\r\n")
    sandbox.pty.resize(handle.pid, PtySize(rows=50, cols=100))
    sandbox.pty.send_stdin(handle.pid, b"echo R$(stty size)E$((1+2))\n")
    assert b"R50 100E3" in read_until(handle, b"E3\r\n")
    sandbox.pty.kill(handle.pid)


def test_pty_cwd_and_envs(sandbox: Sandbox):
    handle = sandbox.pty.create(
        PtySize(rows=24, cols=80), cwd="/tmp", envs={"PTYVAR": "v1"}, timeout=PTY_TIMEOUT
    )
    sandbox.pty.send_stdin(handle.pid, b'echo "P=$(pwd):$PTYVAR:E"\n')
    assert b"P=/tmp:v1:E" in read_until(handle, b":E\r\n")
    sandbox.pty.kill(handle.pid)


def test_pty_ctrl_d_ends_shell(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=PTY_TIMEOUT)
    sandbox.pty.send_stdin(handle.pid, PROBE)
    read_until(handle, MARK)
    sandbox.pty.send_stdin(handle.pid, b"\x04")
    assert handle.wait().exit_code == 0


def test_pty_kill(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=PTY_TIMEOUT)
    assert handle.pid in {p.pid for p in sandbox.commands.list()}
    assert sandbox.pty.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert info.value.exit_code == -1
    assert handle.pid not in {p.pid for p in sandbox.commands.list()}


def test_pty_kill_unknown_returns_false(sandbox: Sandbox):
    assert sandbox.pty.kill(999999) is False


def test_pty_list(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=PTY_TIMEOUT)
    try:
        info = {p.pid: p for p in sandbox.commands.list()}[handle.pid]
        assert info.cmd == "/bin/bash"
        assert info.args == ["-i", "-l"]
        assert info.envs.get("TERM") == "xterm-256color"
    finally:
        sandbox.pty.kill(handle.pid)


def test_pty_connect(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=PTY_TIMEOUT)
    sandbox.pty.send_stdin(handle.pid, PROBE)
    read_until(handle, MARK)
    handle.disconnect()
    again = sandbox.pty.connect(handle.pid, timeout=PTY_TIMEOUT)
    assert again.pid == handle.pid
    sandbox.pty.send_stdin(handle.pid, b"echo $((7*7))again\n")
    read_until(again, b"49again")
    sandbox.pty.send_stdin(handle.pid, b"exit 0\n")
    assert again.wait().exit_code == 0


def test_pty_large_output(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=PTY_TIMEOUT)
    sandbox.pty.send_stdin(handle.pid, b"seq 1 20000; echo DONE$((1+1))\n")
    out = read_until(handle, b"DONE2")
    lines = out.split(b"\r\n")
    assert b"19999" in lines and b"20000" in lines
    sandbox.pty.kill(handle.pid)


async def _wait_for(buf: bytearray, marker: bytes, handle) -> None:
    # Bounded by the PTY's own timeout: if the stream ends, wait() returns or raises.
    while marker not in buf:
        if handle.exit_code is not None:
            raise AssertionError(f"PTY ended before {marker!r}; got {bytes(buf)!r}")
        await asyncio.sleep(0.02)


async def test_async_pty_create_send_resize_kill(async_sandbox: AsyncSandbox):
    buf = bytearray()
    handle = await async_sandbox.pty.create(
        PtySize(rows=24, cols=80), on_data=buf.extend, timeout=PTY_TIMEOUT
    )
    await async_sandbox.pty.send_stdin(handle.pid, PROBE)
    await asyncio.wait_for(_wait_for(buf, MARK, handle), PTY_TIMEOUT)
    await async_sandbox.pty.resize(handle.pid, PtySize(rows=33, cols=77))
    await async_sandbox.pty.send_stdin(handle.pid, b"echo R$(stty size)E\n")
    await asyncio.wait_for(_wait_for(buf, b"R33 77E", handle), PTY_TIMEOUT)
    assert await async_sandbox.pty.kill(handle.pid) is True
    with pytest.raises(CommandExitException):
        await handle.wait()
    assert await async_sandbox.pty.kill(handle.pid) is False


async def test_async_pty_connect_and_exit(async_sandbox: AsyncSandbox):
    first = bytearray()
    handle = await async_sandbox.pty.create(
        PtySize(rows=24, cols=80), on_data=first.extend, timeout=PTY_TIMEOUT
    )
    await handle.disconnect()
    second = bytearray()
    again = await async_sandbox.pty.connect(handle.pid, on_data=second.extend)
    await async_sandbox.pty.send_stdin(handle.pid, PROBE)
    await asyncio.wait_for(_wait_for(second, MARK, again), PTY_TIMEOUT)
    await async_sandbox.pty.send_stdin(handle.pid, b"exit\n")
    assert (await again.wait()).exit_code == 0
