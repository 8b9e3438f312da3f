"""The isolated runner leaves nothing behind: no process, no mount, no directory.

The session-wide check is the autouse `no_leaks_after_session` fixture in conftest.py;
these tests look at single runs, including ones that end badly.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time

import pytest
from e2b import Sandbox

from .conftest import ROOTS, alive, host_mounts, start_isolated, state_dirs

pytestmark = pytest.mark.root


def _pids_running(marker: str) -> list[int]:
    """Host pids whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and alive(int(entry)):
            found.append(int(entry))
    return found


@pytest.fixture(autouse=True)
def private_run_dirs(tmp_path, monkeypatch):
    """Give this test's runners their own temporary directory, so that the before and
    after comparisons see only what these tests made, not other work on the machine."""
    run_dirs = tmp_path / "runs"
    run_dirs.mkdir()
    run_dirs.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(run_dirs))
    return run_dirs


@pytest.mark.parametrize("kind", ROOTS)
def test_stop_takes_envd_its_children_and_mounts(kind: str):
    mounts = host_mounts()
    dirs = state_dirs()
    seconds = 86400 + os.getpid() % 1000  # a command line no other process has
    with start_isolated(kind) as env:
        envd_pid, state_dir = env.pid, env.state_dir
        assert envd_pid and alive(envd_pid)
        assert state_dir and os.path.isdir(state_dir)
        sbx = Sandbox.create(debug=True, sandbox_url=env.url)
        sbx.commands.run(f"sleep {seconds}", background=True)
        sbx.commands.run(f"sleep {seconds + 1} >/dev/null 2>&1 &")  # an orphan
        for _ in range(100):  # until both have exec'd sleep; bounded, no timing asserted
            running = _pids_running(f"sleep {seconds}"), _pids_running(f"sleep {seconds + 1}")
            if all(running):
                break
            time.sleep(0.05)
        assert all(running), running
        children = running[0] + running[1]
    assert not alive(envd_pid)
    assert [p for p in children if alive(p)] == []
    assert not os.path.exists(state_dir)
    assert host_mounts() == mounts
    assert state_dirs() == dirs
    assert env.pid is None


def test_exception_inside_block_still_cleans_up():
    mounts = host_mounts()
    dirs = state_dirs()
    pid = None
    with pytest.raises(RuntimeError, match="boom"), start_isolated("busybox") as env:
        pid = env.pid
        raise RuntimeError("boom")
    assert pid is not None and not alive(pid)
    assert host_mounts() == mounts
    assert state_dirs() == dirs


def test_stop_is_idempotent():
    env = start_isolated("busybox")
    env.start()
    pid = env.pid
    env.stop()
    env.stop()
    assert not alive(pid)


def test_failed_start_leaves_nothing():
    """envd cannot bind a port that is taken: start() fails and undoes what it did."""
    mounts = host_mounts()
    dirs = state_dirs()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        isolated = pytest.importorskip("hearth.node.runtime.isolated")
        env = isolated.IsolatedEnvd("busybox", port=port, start_timeout=5)
        with pytest.raises(isolated.IsolatedEnvdError):
            env.start()
    assert host_mounts() == mounts
    assert state_dirs() == dirs
    assert _pids_running(f"--port {port}") == []
