"""Container sandboxes outlive a restart of `hearth serve` and are adopted again.

A process started before the restart keeps running (its counter goes on), the sandbox
is listed, reachable and killable through the SDK afterwards, and nothing is left.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from e2b import Sandbox

from .conftest import ServerThread

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: containers and network slots"),
]


@pytest.fixture
def data_dir():
    # The container runtime's users must be able to search every parent directory.
    path = Path(tempfile.mkdtemp(prefix="hearth-restart-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _serve(data_dir: Path, port: int = 0):
    from hearth.serve import ServeOptions

    options = ServeOptions(
        host="127.0.0.1",
        port=port,
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir}/hearth.db",
        runtime="container",
    )
    server = ServerThread(options)
    return server, server.start()


def _counter(sandbox: Sandbox) -> int:
    return int(sandbox.commands.run("cat /tmp/count").stdout.strip() or 0)


def test_sandbox_survives_server_restart(data_dir, monkeypatch):
    server, running = _serve(data_dir)
    env = {
        "E2B_API_KEY": running.api_key,
        "E2B_API_URL": running.api_url,
        "E2B_SANDBOX_URL": running.sandbox_url,
        "E2B_DOMAIN": running.domain,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    try:
        sandbox = Sandbox.create("base", timeout=300)
        sandbox.commands.run(
            "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1;"
            " done' >/dev/null 2>&1 &"
        )
    finally:
        server.stop()

    # Same port, so the SDK's URLs stay valid; same data dir, so the same store and node.
    port = int(running.api_url.rsplit(":", 1)[1])
    server, _ = _serve(data_dir, port)
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
        server.stop()
    # Nothing of the sandbox is left: no network namespace pinned, no mount.
    netns = data_dir / "node" / "netns"
    assert not netns.exists() or list(netns.iterdir()) == []
    assert str(data_dir) not in Path("/proc/self/mountinfo").read_text()
