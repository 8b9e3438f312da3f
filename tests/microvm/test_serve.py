"""microVM sandboxes through `hearth serve` and the real e2b SDK: create, commands,
files, pause and resume (the SDK's own calls), kill."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from .conftest import MICROVM, forget_snapshots

pytestmark = MICROVM

# Apart from the session node's slots (tests/microvm/conftest.py): own prefix and table.
PREFIX = "hvs"
TABLE = "hearth_vmserve"
POOL = "10.217.0.0/16"


@pytest.fixture(scope="module")
def served():
    from hearth.node.local import LocalNode
    from hearth.node.runtime.microvm import driver
    from hearth.serve import ServeOptions, serve

    data = Path(tempfile.mkdtemp(prefix="hearth-microvm-serve-", dir="/var/tmp"))
    data.chmod(0o755)
    patch = pytest.MonkeyPatch()
    patch.setattr(driver, "SLOT_PREFIX", PREFIX)
    patch.setattr(driver, "RULES_TABLE", TABLE)
    options = ServeOptions(host="127.0.0.1", port=0, data_dir=data, runtime="microvm")
    ready = threading.Event()
    box: dict = {}

    def run() -> None:
        async def main() -> None:
            box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
            node = LocalNode(data / "node", runtime="microvm", network_pool=POOL)

            def started(running) -> None:
                box["running"] = running
                ready.set()

            await serve(options, node=node, started=started, stop=box["stop"])

        try:
            asyncio.run(main())
        except BaseException as e:  # reported to the test
            box["error"] = e
        finally:
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(900)
    if "error" in box:
        raise box["error"]
    running = box["running"]
    env = {
        "E2B_API_KEY": running.api_key,
        "E2B_API_URL": running.api_url,
        "E2B_SANDBOX_URL": running.sandbox_url,
        "E2B_DOMAIN": running.domain,
    }
    for name, value in env.items():
        patch.setenv(name, value)
    patch.delenv("E2B_DEBUG", raising=False)
    try:
        yield running
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(120)
        patch.undo()
        subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
        forget_snapshots()


def test_sdk_create_run_files_pause_resume_kill(served):
    from e2b import Sandbox

    sandbox = Sandbox.create("base", timeout=600)
    try:
        result = sandbox.commands.run("echo $E2B_SANDBOX_ID; cat /etc/hostname")
        assert result.stdout.split()[0] == sandbox.sandbox_id
        sandbox.files.write("/home/user/a.txt", "kept across pause")
        sandbox.commands.run("sleep 600 >/dev/null 2>&1 &")
        pid = sandbox.commands.run("pgrep -xf 'sleep 600'").stdout.strip()
        sandbox.beta_pause()
        resumed = Sandbox.connect(sandbox.sandbox_id, timeout=600)
        assert resumed.files.read("/home/user/a.txt") == "kept across pause"
        assert resumed.commands.run("pgrep -xf 'sleep 600'").stdout.strip() == pid
    finally:
        Sandbox.kill(sandbox.sandbox_id)
