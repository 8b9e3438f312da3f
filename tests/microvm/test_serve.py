"""microVM sandboxes through `hearth serve` and the real e2b SDK: create, commands,
files, pause and resume (the SDK's own calls), kill, and the guest envd's logs."""

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


class Served:
    """`hearth serve --runtime microvm` in a thread, stoppable and startable again on the
    same data directory (a restart of the server)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.box: dict = {}
        self.thread: threading.Thread | None = None

    def start(self):
        from hearth.node.local import LocalNode
        from hearth.serve import ServeOptions, serve

        options = ServeOptions(
            host="127.0.0.1",
            port=0,
            data_dir=self.data,
            runtime="microvm",
            pool_sizes={"base": 1},  # the snapshot of base is taken at start, not at a create
        )
        ready = threading.Event()
        box = self.box = {}

        def run() -> None:
            async def main() -> None:
                box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
                node = LocalNode(self.data / "node", runtime="microvm", network_pool=POOL)

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

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(900)
        if "error" in box:
            raise box["error"]
        return box["running"]

    def stop(self) -> None:
        if self.thread is not None and "loop" in self.box:
            self.box["loop"].call_soon_threadsafe(self.box["stop"].set)
            self.thread.join(120)
        self.thread = None


def _use(patch: pytest.MonkeyPatch, running) -> None:
    env = {
        "E2B_API_URL": running.api_url,
        "E2B_SANDBOX_URL": running.sandbox_url,
        "E2B_DOMAIN": running.domain,
    }
    if running.api_key is not None:  # printed at the first start only; kept after
        env["E2B_API_KEY"] = running.api_key
    for name, value in env.items():
        patch.setenv(name, value)
    patch.delenv("E2B_DEBUG", raising=False)


@pytest.fixture(scope="module")
def served():
    from hearth.node.runtime.microvm import driver

    data = Path(tempfile.mkdtemp(prefix="hearth-microvm-serve-", dir="/var/tmp"))
    data.chmod(0o755)
    patch = pytest.MonkeyPatch()
    patch.setattr(driver, "SLOT_PREFIX", PREFIX)
    patch.setattr(driver, "RULES_TABLE", TABLE)
    server = Served(data)
    _use(patch, server.start())
    try:
        yield server, patch
    finally:
        server.stop()
        # What a detaching server left running, stopped by a node that adopts it.
        from hearth.node.local import LocalNode

        async def close_all() -> None:
            node = LocalNode(data / "node", runtime="microvm", network_pool=POOL)
            await node.start()
            await node.close()

        asyncio.run(close_all())
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


COUNTER = (
    "import os, time\n"
    "n = 0\n"
    "while True:\n"
    "    n += 1\n"
    "    open('/tmp/count.new', 'w').write(str(n))\n"
    "    os.replace('/tmp/count.new', '/tmp/count')\n"
    "    time.sleep(0.2)\n"
)


def test_a_paused_vm_resumes_with_its_memory_after_serve_restarts(served):
    from e2b import Sandbox, SandboxState

    server, patch = served
    sandbox = Sandbox.create("base", timeout=600)
    try:
        sandbox.files.write("/tmp/counter.py", COUNTER)
        sandbox.commands.run("python3 /tmp/counter.py", background=True)
        find = "pgrep -xf 'python3 /tmp/counter.py' || true"
        pid = _wait_for(lambda: sandbox.commands.run(find).stdout)
        _wait_for(lambda: sandbox.commands.run("cat /tmp/count 2>/dev/null || true").stdout)
        assert sandbox.beta_pause()

        server.stop()
        _use(patch, server.start())

        assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED
        resumed = Sandbox.connect(sandbox.sandbox_id, timeout=600)
        assert resumed.commands.run(find).stdout == pid
        first = int(resumed.files.read("/tmp/count"))
        later = _wait_for(
            lambda: (n := int(resumed.files.read("/tmp/count"))) > first and n, tries=600
        )
        assert later > first
    finally:
        Sandbox.kill(sandbox.sandbox_id)


def _wait_for(probe, tries: int = 300):
    """Poll `probe` until it gives something truthy (no wall-clock limit: a number of
    tries, each a round trip to the guest)."""
    for _ in range(tries):
        value = probe()
        if value:
            return value
    raise AssertionError("the guest never got there")


def test_sdk_snapshot_and_fork_keep_the_memory(served):
    """Through `hearth serve --runtime microvm`: a counter started before the snapshot goes
    on counting in every sandbox made from it and in each fork, the source's too; deleting
    the snapshot while its sandboxes run keeps its saved state until they are gone."""
    from e2b import Sandbox

    server, _ = served
    saved = server.data / "node" / "microvm" / "saved"
    sandbox = Sandbox.create("base", timeout=600)
    made: list[Sandbox] = []
    try:
        sandbox.files.write("/tmp/counter.py", COUNTER)
        sandbox.commands.run("python3 /tmp/counter.py", background=True)
        find = "pgrep -xf 'python3 /tmp/counter.py' || true"
        pid = _wait_for(lambda: sandbox.commands.run(find).stdout)
        _wait_for(lambda: sandbox.commands.run("cat /tmp/count 2>/dev/null || true").stdout)
        snapshot = sandbox.create_snapshot(name="vm-counter")
        listed = Sandbox.list_snapshots(sandbox_id=sandbox.sandbox_id).next_items()
        assert [s.snapshot_id for s in listed] == [snapshot.snapshot_id]
        made.append(Sandbox.create(snapshot.snapshot_id, timeout=600))
        (fork,) = sandbox.fork(timeout=600)
        assert isinstance(fork, Sandbox)
        made.append(fork)
        for copy in [*made, sandbox]:
            assert copy.commands.run(find).stdout == pid
            first = int(copy.files.read("/tmp/count"))
            assert _wait_for(lambda c=copy, f=first: int(c.files.read("/tmp/count")) > f)
        entropy = {c.commands.run("head -c16 /dev/urandom | od -An -tx1").stdout for c in made}
        assert len(entropy) == len(made)
        assert Sandbox.delete_snapshot(snapshot.snapshot_id)
        # The snapshot's state and the fork's stay while sandboxes restored from them run.
        assert len([p for p in saved.iterdir() if not p.name.startswith(".")]) == 2
        assert made[0].files.read("/tmp/counter.py") == COUNTER
    finally:
        for copy in made:
            copy.kill()
        Sandbox.kill(sandbox.sandbox_id)
    assert _wait_for(lambda: not [p for p in saved.iterdir() if not p.name.startswith(".")])


def test_guest_envd_lines_are_served_and_kept_after_the_kill(served):
    """Sandbox logs of a microVM sandbox: the guest's envd lines reach the logs routes
    the same way as a container's (pulled through envd's port), also after the kill."""
    import json
    import os

    import httpx
    from e2b import Sandbox

    sbx = Sandbox.create("base", timeout=600)
    try:
        sbx.commands.run("echo from-the-guest; echo to-stderr >&2")
        sbx.files.write("/tmp/guest.txt", "x")
    finally:
        sbx.kill()
    headers = {"X-API-Key": os.environ["E2B_API_KEY"]}
    url = f"{os.environ['E2B_API_URL']}/sandboxes/{sbx.sandbox_id}/logs"
    records = [json.loads(e["line"]) for e in httpx.get(url, headers=headers).json()["logs"]]
    output = {(r.get("stream"), r["message"]) for r in records}
    assert {("stdout", "from-the-guest"), ("stderr", "to-stderr")} <= output
    assert any(r["message"] == "File write" and r["path"] == "/tmp/guest.txt" for r in records)
    assert [r["event_type"] for r in records if r["logger"] == "system"][-1] == "sandbox.killed"
