"""Container sandboxes outlive a restart of `hearth serve` and are adopted again.

A process started before the restart keeps running (its counter goes on), the sandbox
is listed, reachable and killable through the SDK afterwards, and nothing is left.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from e2b import Sandbox

from .conftest import serve_containers

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: containers and network slots"),
]


def _counter(sandbox: Sandbox) -> int:
    return int(sandbox.commands.run("cat /tmp/count").stdout.strip() or 0)


def test_sandbox_survives_server_restart(container_data_dir, monkeypatch):
    data_dir = container_data_dir
    server, running = serve_containers(data_dir)
    for name, value in running.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    try:
        sandbox = Sandbox.create("base", timeout=300)
        sandbox.commands.run(
            "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1;"
            " done' >/dev/null 2>&1 &"
        )
    finally:
        assert server.stop(), "hearth serve did not stop"

    # Same port, so the SDK's URLs stay valid; same data dir, so the same store and node.
    server, _ = serve_containers(data_dir, running.port)
    try:
        assert sandbox.sandbox_id in [s.sandbox_id for s in Sandbox.list().next_items()]
        again = Sandbox.connect(sandbox.sandbox_id)
        first = _counter(again)
        for _ in range(100):  # bounded: until the counter moves on; no timing asserted
            if _counter(again) > first:
                break
            time.sleep(0.1)
        assert _counter(again) > first, "the process did not survive the restart"
        assert again.kill() is True
        assert sandbox.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()]
    finally:
        assert server.stop(), "hearth serve did not stop"
    # Nothing of the sandbox is left: no network namespace pinned, no mount.
    netns = data_dir / "node" / "netns"
    assert not netns.exists() or list(netns.iterdir()) == []
    assert str(data_dir) not in Path("/proc/self/mountinfo").read_text()
