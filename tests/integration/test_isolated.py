"""IsolatedEnvd runs the real envd over both roots and leaves nothing behind."""

from __future__ import annotations

import http.client
import os
import socket
from pathlib import Path

import pytest

from hearth.node.runtime.isolated import IsolatedEnvd, IsolatedEnvdError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: uid maps and mounts"),
    pytest.mark.skipif(
        not Path(__file__).parents[2].joinpath("src/hearth/envd/__main__.py").exists(),
        reason="envd is not written yet",
    ),
]


def _health(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def _pids_in_pid_namespace(pid: int) -> set[int]:
    """Host pids of every process in the pid namespace that `pid` belongs to."""
    target = os.readlink(f"/proc/{pid}/ns/pid")
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    found.add(int(entry))
            except OSError:
                pass
    return found


def _alive_in(pids: set[int], namespace: str) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == namespace:
                alive.add(pid)
        except OSError:
            pass
    return alive


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


def _host_mounts_mentioning(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if text in line]


@pytest.mark.parametrize("kind", ["busybox", "debian"])
def test_envd_runs_isolated_and_stop_leaves_nothing(kind: str) -> None:
    from e2b import Sandbox

    envd = IsolatedEnvd(kind)
    with envd:
        assert _health(envd.port) == 204
        state_dir = envd.state_dir
        assert state_dir is not None and state_dir.is_dir()
        assert (envd.root_dir / "opt/hearth/envd/bin").is_dir()

        # A process of the user's that would outlive a careless stop.
        sandbox = Sandbox.create(debug=True, sandbox_url=envd.url)
        sandbox.commands.run("sleep 600", background=True)
        result = sandbox.commands.run("id -u; hostname; cat /proc/1/cmdline | tr '\\0' ' '")
        uid, hostname, init = result.stdout.splitlines()
        assert uid == "1000"
        assert hostname == "hearth"
        assert "hearth.envd" in init

        pids = _pids_in_pid_namespace(envd.pid)
        namespace = os.readlink(f"/proc/{envd.pid}/ns/pid")
        assert len(pids) >= 2  # envd (PID 1, which also reaps orphans), sleep
        launcher = _parent(envd.pid)

    assert _alive_in(pids, namespace) == set()
    assert not Path(f"/proc/{launcher}").exists()
    assert not state_dir.exists()
    assert _host_mounts_mentioning(state_dir.name) == []
    assert envd.pid is None
    envd.stop()  # idempotent


def test_failed_start_cleans_up() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        envd = IsolatedEnvd("busybox", taken.getsockname()[1], start_timeout=10)
        with pytest.raises(IsolatedEnvdError) as failure:
            envd.start()
    assert "envd exited" in str(failure.value)
    assert envd.state_dir is not None and not envd.state_dir.exists()
    assert _host_mounts_mentioning(envd.state_dir.name) == []
