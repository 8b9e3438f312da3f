"""A running command's wait() when its sandbox is killed or paused, through the released
SDKs against a container-runtime `hearth serve` (E2B's `test_sandbox_killed_during_run`,
spec §6.2).

The gateway ends the command's stream as E2B's proxy does (an `unavailable` end of the
Connect stream); the SDK then probes the sandbox's /health, gets the 502 of a sandbox
that "was not found", and says it was killed. Each command's own deadline is there only
so that a stream that never ends fails the test instead of hanging it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox, SandboxNotRunningException

from .conftest import Hearth, run_npm_script, served_containers

pytestmark = pytest.mark.root

JS_KILL = Path(__file__).with_name("kill_during_run.mjs")
ENDED = "killed or reached its end of life"


@pytest.fixture(scope="module")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-kill-") as info:
        yield info


@pytest.fixture
def sandbox(hearth: Hearth) -> Iterator[Sandbox]:
    sbx = Sandbox.create("base", timeout=120)
    try:
        yield sbx
    finally:
        sbx.kill()


def test_sandbox_killed_during_run(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 600", background=True, timeout=120)
    assert sandbox.kill() is True
    with pytest.raises(SandboxNotRunningException, match=ENDED):
        handle.wait()
    assert sandbox.is_running() is False


def test_the_health_probe_of_a_killed_sandbox(hearth: Hearth, sandbox: Sandbox) -> None:
    sandbox.kill()
    headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49983"}
    health = httpx.get(f"{hearth.sandbox_url}/health", headers=headers, timeout=30)
    assert health.status_code == 502
    assert health.headers["content-type"] == "application/json; charset=utf-8"
    assert health.json() == {
        "sandboxId": sandbox.sandbox_id,
        "message": "The sandbox was not found",
        "code": 502,
    }


def test_a_memory_pause_ends_a_running_commands_stream(sandbox: Sandbox) -> None:
    # A frozen container never closes the connection itself: the gateway cuts it.
    handle = sandbox.commands.run("sleep 600", background=True, timeout=120)
    assert sandbox.pause() is True
    with pytest.raises(SandboxNotRunningException, match=ENDED):
        handle.wait()
    again = Sandbox.connect(sandbox.sandbox_id)
    # The process itself was kept: only its stream ended.
    assert handle.pid in [p.pid for p in again.commands.list()]


def test_js_sandbox_killed_during_run(hearth: Hearth) -> None:
    printed = run_npm_script(JS_KILL, hearth.env(), timeout=300)
    results = {name: values[-1] for name, values in printed.items()}
    assert results["killed"] is True
    # JS reports the stream's `unavailable` end as a TimeoutError, as it does with E2B.
    assert results["waited"]["name"] == "TimeoutError", results["waited"]
    assert "ended before the stream completed" in results["waited"]["message"]
    assert results["running"] is False
