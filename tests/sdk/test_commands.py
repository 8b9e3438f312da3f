"""`commands` of the real Python SDK (sync and async) against envd (spec §3.5)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    TimeoutException,
)

from .conftest import HOME, USER, Envd

pytestmark = pytest.mark.root


# --- run -------------------------------------------------------------------------------


def test_run_echo(sandbox: Sandbox):
    result = sandbox.commands.run('echo "Hello, World!"')
    assert (result.exit_code, result.stdout, result.stderr) == (0, "Hello, World!\n", "")
    assert result.error is None


def test_run_special_characters_and_multiline(sandbox: Sandbox):
    assert sandbox.commands.run("echo '!@#$%^&*()_+'").stdout == "!@#$%^&*()_+\n"
    assert sandbox.commands.run('echo "Hello,\nWorld!"').stdout == "Hello,\nWorld!\n"


def test_run_stdout_and_stderr_are_separate(sandbox: Sandbox):
    result = sandbox.commands.run("echo out; echo err >&2")
    assert (result.stdout, result.stderr) == ("out\n", "err\n")


def test_exit_code_raises_with_output(sandbox: Sandbox):
    with pytest.raises(CommandExitException) as info:
        sandbox.commands.run("echo partial; echo broken >&2; exit 3")
    err = info.value
    assert err.exit_code == 3
    assert err.stdout == "partial\n"
    assert err.stderr == "broken\n"
    assert err.error == "exit status 3"


def test_missing_command_exits_127(sandbox: Sandbox):
    with pytest.raises(CommandExitException) as info:
        sandbox.commands.run("definitely-not-a-command-xyz")
    assert info.value.exit_code == 127
    assert "not found" in info.value.stderr


async def test_async_run_and_exit_code(async_sandbox: AsyncSandbox):
    result = await async_sandbox.commands.run("echo hi; echo there >&2")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "hi\n", "there\n")
    with pytest.raises(CommandExitException) as info:
        await async_sandbox.commands.run("echo nope >&2; exit 42")
    assert (info.value.exit_code, info.value.stderr) == (42, "nope\n")


def test_callbacks_receive_all_output(sandbox: Sandbox):
    out: list[str] = []
    err: list[str] = []
    result = sandbox.commands.run(
        "for i in 1 2 3; do echo o$i; echo e$i >&2; done",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert "".join(out) == result.stdout == "o1\no2\no3\n"
    assert "".join(err) == result.stderr == "e1\ne2\ne3\n"


async def test_async_callbacks_receive_all_output(async_sandbox: AsyncSandbox):
    out: list[str] = []
    err: list[str] = []

    async def on_err(chunk: str) -> None:  # the async SDK accepts coroutine handlers too
        err.append(chunk)

    result = await async_sandbox.commands.run(
        "echo a; echo b >&2; echo c", on_stdout=out.append, on_stderr=on_err
    )
    assert "".join(out) == result.stdout == "a\nc\n"
    assert "".join(err) == result.stderr == "b\n"


def test_large_output(sandbox: Sandbox):
    # ~590 KB over many reads; every byte must arrive once, in order.
    result = sandbox.commands.run("seq 1 100000")
    expected = "".join(f"{i}\n" for i in range(1, 100001))
    assert len(result.stdout) == len(expected)
    assert result.stdout == expected


def test_large_stderr(sandbox: Sandbox):
    result = sandbox.commands.run("seq 1 50000 >&2")
    assert result.stderr == "".join(f"{i}\n" for i in range(1, 50001))
    assert result.stdout == ""


def test_truncated_multibyte_sequence_becomes_replacement_char(sandbox: Sandbox):
    # 8191 'a' then the first byte (0xe2, octal 342) of a 3-byte sequence, as the SDK's
    # own test does; octal escapes work in bash's and busybox's printf alike.
    result = sandbox.commands.run("printf '%s\\342' " + "a" * 8191)
    assert result.stdout == "a" * 8191 + "\ufffd"


def test_multibyte_characters_across_chunk_boundaries(sandbox: Sandbox):
    # A 3-byte character straddles every plausible read size (4 KiB ... 64 KiB); chunks
    # must carry the raw bytes, so the SDK's incremental decoder puts it back together.
    script = (
        "i=0; while [ $i -lt 3000 ]; do printf 'ab\\342\\202\\254'; i=$((i+1)); done; "
        "printf '\\360\\237\\230\\200\\n'"
    )
    result = sandbox.commands.run(script)
    assert result.stdout == "ab\u20ac" * 3000 + "\U0001f600\n"


# --- environment, cwd, user ------------------------------------------------------------


def test_envs_apply_to_one_command_only(sandbox: Sandbox):
    assert sandbox.commands.run("echo $FOO", envs={"FOO": "bar"}).stdout == "bar\n"
    assert sandbox.commands.run("echo $FOO").stdout == "\n"


def test_envs_override_and_special_values(sandbox: Sandbox):
    result = sandbox.commands.run(
        'printf "%s|%s" "$A" "$B"', envs={"A": "with space", "B": "x=y;'q'"}
    )
    assert result.stdout == "with space|x=y;'q'"


def test_sandbox_env_basics(sandbox: Sandbox):
    result = sandbox.commands.run('echo "$HOME|$USER|$LOGNAME"; echo "$PATH"')
    first, path = result.stdout.splitlines()
    assert first == f"{HOME}|{USER}|{USER}"
    assert "/bin" in path.split(":")


async def test_async_envs_do_not_leak(async_sandbox: AsyncSandbox):
    r = await async_sandbox.commands.run("echo $FOO", envs={"FOO": "bar"})
    assert r.stdout == "bar\n"
    assert (await async_sandbox.commands.run("echo $FOO")).stdout == "\n"


def test_default_user_home_and_cwd(sandbox: Sandbox):
    result = sandbox.commands.run("whoami; echo $HOME; pwd; id -u")
    assert result.stdout == f"{USER}\n{HOME}\n{HOME}\n1000\n"


def test_user_root(sandbox: Sandbox):
    result = sandbox.commands.run("whoami; id -u; echo $HOME", user="root")
    assert result.stdout == "root\n0\n/root\n"


def test_user_explicit_user(sandbox: Sandbox):
    assert sandbox.commands.run("whoami", user=USER).stdout == f"{USER}\n"


def test_unknown_user_is_unauthenticated(sandbox: Sandbox):
    # envd answers `unauthenticated` ("invalid username: '<u>'") for a user it cannot find.
    with pytest.raises(AuthenticationException):
        sandbox.commands.run("whoami", user="no-such-user-xyz")


def test_cwd_absolute(sandbox: Sandbox):
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"


def test_cwd_tilde(sandbox: Sandbox):
    assert sandbox.commands.run("pwd", cwd="~").stdout == f"{HOME}\n"


def test_cwd_relative_resolves_under_home(sandbox: Sandbox, workdir: str, name: str):
    # envd resolves a relative cwd against the user's home (ExpandAndResolve).
    assert sandbox.commands.run("pwd", cwd=name).stdout == f"{workdir}\n"


def test_cwd_missing_is_invalid_argument(sandbox: Sandbox):
    with pytest.raises(InvalidArgumentException):
        sandbox.commands.run("pwd", cwd="/does/not/exist")


async def test_async_cwd_missing_is_invalid_argument(async_sandbox: AsyncSandbox):
    with pytest.raises(InvalidArgumentException):
        await async_sandbox.commands.run("pwd", cwd="/does/not/exist")


def test_files_created_by_commands_belong_to_user(sandbox: Sandbox, workdir: str):
    sandbox.commands.run(f"echo x > {workdir}/made-by-cmd")
    info = sandbox.files.get_info(f"{workdir}/made-by-cmd")
    assert (info.owner, info.group) == (USER, USER)


# --- timeouts ----------------------------------------------------------------------------


def test_timeout_raises(sandbox: Sandbox):
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 10", timeout=2)


def test_timeout_raises_when_iterating(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 10", timeout=2, background=True)
    with pytest.raises(TimeoutException):
        for _ in handle:
            pass


async def test_async_timeout_raises(async_sandbox: AsyncSandbox):
    with pytest.raises(TimeoutException):
        await async_sandbox.commands.run("sleep 10", timeout=2)


def test_timeout_kills_the_process(sandbox: Sandbox, name: str):
    # envd uses Connect-Timeout-Ms on Start as the process lifetime (§3.4).
    marker = f"/tmp/{name}"
    with pytest.raises(TimeoutException):
        sandbox.commands.run(f"sleep 3; touch {marker}", timeout=1)
    sandbox.commands.run("sleep 4")
    assert not sandbox.files.exists(marker)


def test_run_within_timeout(sandbox: Sandbox):
    assert sandbox.commands.run("echo ok", timeout=10).stdout == "ok\n"


# --- background, list, kill, connect ---------------------------------------------------------


def test_background_wait(sandbox: Sandbox):
    handle = sandbox.commands.run("echo started; sleep 0.2; echo done", background=True)
    assert handle.pid > 0
    result = handle.wait()
    assert result.stdout == "started\ndone\n"


def test_background_iterate(sandbox: Sandbox):
    handle = sandbox.commands.run("echo a; echo b >&2", background=True)
    seen = list(handle)
    assert ("a\n", None, None) in seen
    assert (None, "b\n", None) in seen


def test_list_shows_running_commands(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 30", background=True, envs={"TAGGED": "1"}, cwd="/tmp")
    try:
        procs = {p.pid: p for p in sandbox.commands.list()}
        assert handle.pid in procs
        info = procs[handle.pid]
        assert info.cmd == "/bin/bash"
        assert info.args == ["-l", "-c", "sleep 30"]
        assert info.envs.get("TAGGED") == "1"
        assert info.cwd == "/tmp"
    finally:
        assert sandbox.commands.kill(handle.pid) is True
    assert handle.pid not in {p.pid for p in sandbox.commands.list()}


def test_kill(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 30", background=True)
    assert sandbox.commands.kill(handle.pid) is True
    # The Start stream ends with an end event (exit code -1, "signal: killed").
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert info.value.exit_code == -1
    assert info.value.error == "signal: killed"
    with pytest.raises(CommandExitException):
        sandbox.commands.run(f"kill -0 {handle.pid}")
    assert handle.pid not in {p.pid for p in sandbox.commands.list()}


def test_handle_kill(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 30", background=True)
    assert handle.kill() is True
    with pytest.raises(CommandExitException):
        handle.wait()


def test_kill_unknown_pid_returns_false(sandbox: Sandbox):
    assert sandbox.commands.kill(999999) is False


async def test_async_background_kill_list(async_sandbox: AsyncSandbox):
    handle = await async_sandbox.commands.run("sleep 30", background=True)
    assert handle.pid in {p.pid for p in await async_sandbox.commands.list()}
    assert await async_sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException):
        await handle.wait()
    assert handle.pid not in {p.pid for p in await async_sandbox.commands.list()}
    assert await async_sandbox.commands.kill(999999) is False


def test_connect_to_running_command(sandbox: Sandbox):
    handle = sandbox.commands.run("read line; echo got $line", background=True, stdin=True)
    handle.disconnect()
    again = sandbox.commands.connect(handle.pid)
    assert again.pid == handle.pid
    sandbox.commands.send_stdin(handle.pid, "x\n")
    assert again.wait().stdout == "got x\n"


def test_connect_sees_only_future_output(sandbox: Sandbox):
    handle = sandbox.commands.run("echo before; read line; echo after", background=True, stdin=True)
    first = next(iter(handle))
    assert first == ("before\n", None, None)
    again = sandbox.commands.connect(handle.pid)
    sandbox.commands.send_stdin(handle.pid, "\n")
    assert again.wait().stdout == "after\n"


def test_connect_unknown_pid_raises_not_found(sandbox: Sandbox):
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(999999).wait()


async def test_async_connect(async_sandbox: AsyncSandbox):
    handle = await async_sandbox.commands.run(
        "read line; echo got $line", background=True, stdin=True
    )
    await handle.disconnect()
    out: list[str] = []
    again = await async_sandbox.commands.connect(handle.pid, on_stdout=out.append)
    await async_sandbox.commands.send_stdin(handle.pid, "y\n")
    result = await again.wait()
    assert result.stdout == "got y\n"
    assert "".join(out) == "got y\n"


async def test_async_connect_unknown_pid_raises_not_found(async_sandbox: AsyncSandbox):
    with pytest.raises(NotFoundException):
        h = await async_sandbox.commands.connect(999999)
        await h.wait()


# --- stdin ---------------------------------------------------------------------------------


def test_stdin_disabled_read_exits_1(sandbox: Sandbox):
    with pytest.raises(CommandExitException) as info:
        sandbox.commands.run("read x")
    assert info.value.exit_code == 1


def test_stdin_disabled_cat_sees_eof(sandbox: Sandbox):
    assert sandbox.commands.run("cat; echo eof").stdout == "eof\n"


def test_send_stdin_and_close(sandbox: Sandbox):
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "Hello, World!\n")
    sandbox.commands.send_stdin(handle.pid, b"!@#$%^&*()_+ \xe2\x82\xac\n")
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "Hello, World!\n!@#$%^&*()_+ \u20ac\n"


def test_send_stdin_echoed_as_it_arrives(sandbox: Sandbox):
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "Hello,\nWorld!")
    for stdout, _, _ in handle:
        assert stdout == "Hello,\nWorld!"
        break
    handle.kill()


def test_handle_send_stdin_and_close(sandbox: Sandbox):
    handle = sandbox.commands.run("wc -c", background=True, stdin=True)
    handle.send_stdin("12345")
    handle.close_stdin()
    assert handle.wait().stdout.strip() == "5"


def test_send_stdin_unknown_pid(sandbox: Sandbox):
    with pytest.raises(NotFoundException):
        sandbox.commands.send_stdin(999999, "x")


def test_send_stdin_large(sandbox: Sandbox):
    handle = sandbox.commands.run("wc -c", background=True, stdin=True)
    chunk = "z" * 65536
    for _ in range(16):
        sandbox.commands.send_stdin(handle.pid, chunk)
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout.strip() == str(16 * 65536)


async def test_async_send_stdin_and_close(async_sandbox: AsyncSandbox):
    handle = await async_sandbox.commands.run("cat", background=True, stdin=True)
    await async_sandbox.commands.send_stdin(handle.pid, "async\n")
    await async_sandbox.commands.close_stdin(handle.pid)
    assert (await handle.wait()).stdout == "async\n"


# --- concurrency ---------------------------------------------------------------------------


def test_concurrent_commands_threads(sandbox: Sandbox):
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = sandbox.commands.run(f"echo {i}").stdout
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == {i: f"{i}\n" for i in range(8)}


async def test_async_concurrent_commands(async_sandbox: AsyncSandbox):
    outs = await asyncio.gather(*(async_sandbox.commands.run(f"echo {i}") for i in range(10)))
    assert [r.stdout for r in outs] == [f"{i}\n" for i in range(10)]


def test_root_can_sudo_or_is_busybox(sandbox: Sandbox, envd: Envd):
    # The debian root gives `user` passwordless sudo (§3.5 item 8); busybox has no sudo.
    if envd.busybox:
        pytest.skip("busybox root has no sudo")
    assert sandbox.commands.run("sudo -n whoami").stdout == "root\n"
    assert sandbox.commands.run("sudo echo $FOO", envs={"FOO": "bar"}).stdout == "bar\n"
    assert sandbox.commands.run("sudo echo $FOO").stdout == "\n"
