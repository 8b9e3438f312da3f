"""Fixtures for the microvm runtime's tests: one LocalNode(runtime="microvm") for the
session, the SDK in debug mode against a sandbox's envd, and leaks().

These boot real QEMU microVMs (under TCG where the host lacks vmx/svm: slow guest code,
so the template snapshot is taken once per session) and need root for network slots.
Their slots use their own interface prefix and rules table, apart from other tests'.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hearth.node.interface import SandboxSpec
from hearth.node.network.rules import SLOT_SETS

PREFIX = "hvt"
TABLE = "hearth_vmtest"
POOL = "10.214.0.0/16"
ENVD_PORT = 49983

MICROVM = [
    pytest.mark.microvm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network slots, taps, nftables"),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86 (setup.sh)"
    ),
]


def spec(**overrides) -> SandboxSpec:
    fields = {
        "sandbox_id": secrets.token_hex(10),
        "template_id": "debian",
        "cpu_count": 1,
        "memory_mb": 512,
        "envd_access_token": secrets.token_hex(16),
    }
    fields.update(overrides)
    return SandboxSpec(**fields)


def sdk(address, token: str | None):
    """An AsyncSandbox of the real e2b SDK talking to envd directly (debug mode)."""
    from e2b import AsyncSandbox, ConnectionConfig
    from packaging.version import Version

    headers = {"X-Access-Token": token} if token else {}
    config = ConnectionConfig(
        debug=True,
        sandbox_url=f"http://{address.host}:{address.port(ENVD_PORT)}",
        extra_sandbox_headers=headers,
    )
    return AsyncSandbox(
        sandbox_id="debug",
        sandbox_domain=None,
        envd_version=Version("0.6.13"),
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=config,
    )


async def run(address, token: str | None, command: str) -> str:
    result = await sdk(address, token).commands.run(command, user="root", timeout=120)
    return result.stdout


# A Python process that counts in the guest: its count survives only a memory pause.
COUNTER = (
    "nohup python3 -c 'import time\ni = 0\nwhile True:\n    i += 1\n"
    '    open("/tmp/count.tmp", "w").write(str(i))\n'
    '    __import__("os").replace("/tmp/count.tmp", "/tmp/count")\n'
    "    time.sleep(0.05)' >/dev/null 2>&1 &"
)
COUNTER_PID = "pgrep -f 'python3 -c import time' | head -1"


async def wait_no_leaks(node, timeout: float = 20) -> dict:
    """`leaks(node)` once it is empty (releases run in the background), or as it stays."""
    for _ in range(int(timeout / 0.2)):
        found = leaks(node)
        if not found:
            return found
        await asyncio.sleep(0.2)
    return leaks(node)


async def count(address, token) -> tuple[int, int]:
    """The counter's value and its process id."""
    out = await run(address, token, f"cat /tmp/count; echo; {COUNTER_PID}")
    value, pid = out.split()
    return int(value), int(pid)


async def build_started(node):
    """The artifact of template "started", built over debian: its start command writes
    its pid to /tmp/started and sleeps (the ready command waits for the file)."""
    import uuid

    from hearth.node.interface import BuildRequest
    from hearth.template.recipe import Base, Recipe

    debian = await node.builtin("debian")
    recipe = Recipe(
        base=Base(template="debian"),
        start_cmd="echo $$ > /tmp/started; exec sleep 100000",
        ready_cmd="test -s /tmp/started",
    )
    request = BuildRequest("started", uuid.uuid4().hex, "team", recipe, parent=debian)
    return await node.build(request, lambda level, message, step: None)


def qemu_processes(data_dir: Path) -> list[str]:
    """QEMU processes working under `data_dir` (their cwd is a VM's directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and cwd.startswith(str(data_dir)):
            found.append(f"{entry} {cwd}")
    return found


def leaks(node) -> dict[str, list]:
    """What of the node's sandboxes exists on the host now (pre-spawned VMMs excluded)."""
    driver = node.runtime
    pooled = {str(p.directory) for r in driver.vmms._ready.values() for p in r}
    pooled_slots = {p.slot.interface for r in driver.vmms._ready.values() for p in r}
    network = driver.network.leftovers()
    found = {
        "qemu": [q for q in qemu_processes(node.data_dir) if q.split()[1] not in pooled],
        "sandbox dirs": sorted(os.listdir(driver.sandboxes_dir)),
        "interfaces": [i for i in network["interfaces"] if i not in pooled_slots],
        "netns": [n for n in network["netns"] if f"{PREFIX}{n}" not in pooled_slots],
        **{
            name: [e for e in network[name] if _interface(e) not in pooled_slots]
            for name in SLOT_SETS
        },
    }
    return {k: v for k, v in found.items() if v}


def _interface(element) -> str:
    return element[0] if isinstance(element, tuple) else element


async def close_restarted(node, data_dir: Path, pool: str) -> None:
    """The end of a test that restarts a node on its own `data_dir`: close it, stop what
    is left whatever went wrong (a new node adopts and stops it), check nothing remains
    and remove the directory."""
    from hearth.node.local import LocalNode

    await node.close()
    if qemu_processes(data_dir):
        async with LocalNode(data_dir, runtime="microvm", network_pool=pool):
            pass
    assert qemu_processes(data_dir) == []
    assert os.listdir(data_dir / "microvm" / "sandboxes") == []
    shutil.rmtree(data_dir)
    forget_snapshots()


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="hearth-microvm-", dir="/var/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
    forget_snapshots()


def forget_snapshots() -> None:
    """Delete the RAM files of snapshots whose data directory is gone (on /dev/shm)."""
    from hearth.node.runtime.microvm.snapshot import sweep_memory

    sweep_memory()


@pytest.fixture(scope="session")
async def node(data_dir: Path) -> AsyncIterator:
    from hearth.node.local import LocalNode
    from hearth.node.runtime.microvm import driver
    from hearth.tls import LocalCA

    mp = pytest.MonkeyPatch()
    mp.setattr(driver, "SLOT_PREFIX", PREFIX)
    mp.setattr(driver, "RULES_TABLE", TABLE)
    ca = LocalCA.load_or_create(data_dir / "tls")
    node = LocalNode(data_dir / "node", runtime="microvm", network_pool=POOL, ca=ca)
    await node.start()
    try:
        yield node
    finally:
        await node.close()
        mp.undo()
        subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)
