"""What a container sandbox sees of itself in /proc (lxcfs) and of its CPUs (its cpuset),
and the node's lxcfs daemon: adopted across a restart, started again when it dies, the
host's view where there is none, nothing left once the node is closed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.node.guest import envd_client
from hearth.node.runtime.container import lxcfs as lxcfs_module
from hearth.node.runtime.container.bundle import LXCFS_FILES

from .conftest import ROOT_ONLY, leaks, only_files_left, spec, wait_no_leaks

pytestmark = ROOT_ONLY

LXCFS_LOGGER = "hearth.node.runtime.container.lxcfs"
# A process that holds 200 MiB of its own memory (written, so resident) until killed.
HOLD = (
    "python3 -c \"import time; b = b'x' * (200 << 20); open('/tmp/held', 'w').close();"
    ' time.sleep(600)" & while [ ! -e /tmp/held ]; do sleep 0.05; done'
)
USED = "free -m | awk '/^Mem:/ {print $3}'"


async def _sh(address, command: str) -> str:
    """The output of `command`, run as root in the sandbox; it must succeed."""
    url = f"http://{address.host}:{address.port(envd_client.ENVD_PORT)}"
    done = await envd_client.run(url, ["/bin/sh", "-c", command])
    assert done.exit_code == 0, done.output
    return done.output.strip()


async def _mem_total_kib(address) -> int:
    return int(await _sh(address, "awk '/^MemTotal:/ {print $2}' /proc/meminfo"))


def _host_mem_total_kib() -> int:
    with open("/proc/meminfo") as meminfo:
        return int(meminfo.readline().split()[1])


def _free(output: str) -> dict[str, int]:
    """`free -m`'s totals: {"Mem": MiB, "Swap": MiB}."""
    rows = (line.split() for line in output.splitlines()[1:])
    return {row[0].rstrip(":"): int(row[1]) for row in rows}


async def _until(condition, what: str) -> None:
    """Wait for `condition()` (the node's background work), a bounded number of looks."""
    for _ in range(1200):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
def node_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are private to root (ContainerRuntime.setup).
    path = Path(tempfile.mkdtemp(prefix="hearth-node-lxcfs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _lxcfs(node):
    """The node's lxcfs daemon object (the container driver's)."""
    return node.runtime.lxcfs


# --- what a sandbox sees -------------------------------------------------------------


async def test_a_sandbox_sees_its_own_memory_cpus_uptime_and_load(node) -> None:
    s = spec("debian", cpu_count=1, memory_mb=512)
    created = time.monotonic()
    address = await node.create(s)
    try:
        free = _free(await _sh(address, "free -m"))
        assert free == {"Mem": 512, "Swap": 0}
        assert await _mem_total_kib(address) == 512 * 1024
        assert await _sh(address, "nproc") == "1"
        assert await _sh(address, "grep -c ^processor /proc/cpuinfo") == "1"
        assert await _sh(address, "grep -c '^cpu[0-9]' /proc/stat") == "1"
        assert await _sh(address, "cat /sys/devices/system/cpu/online") == "0"
        assert await _sh(address, "python3 -c 'import os; print(os.cpu_count())'") == "1"
        # Its own pid namespace's age, not the host's.
        uptime = float((await _sh(address, "cat /proc/uptime")).split()[0])
        assert 0 <= uptime <= time.monotonic() - created + 1
        # Its own tasks: envd, the shell, awk.
        tasks = await _sh(address, "awk '{print $4}' /proc/loadavg")
        assert int(tasks.split("/")[1]) < 20

        # Memory it uses shows as used, and goes when it is freed.
        idle = int(await _sh(address, USED))
        held = int(await _sh(address, f"{HOLD}; {USED}; kill $!; wait; rm /tmp/held"))
        assert held - idle >= 190
        freed = int(await _sh(address, USED))
        assert held - freed >= 150
    finally:
        assert await node.kill(s.sandbox_id)


async def test_sandboxes_of_other_sizes_each_see_their_own(node) -> None:
    small = spec("debian", cpu_count=1, memory_mb=256)
    large = spec("debian", cpu_count=2, memory_mb=1024)
    host_cpus = len(os.sched_getaffinity(0))
    addresses = await asyncio.gather(node.create(small), node.create(large))
    try:
        for s, address in zip((small, large), addresses, strict=True):
            expected_cpus = min(s.cpu_count, host_cpus)
            assert _free(await _sh(address, "free -m"))["Mem"] == s.memory_mb
            assert await _mem_total_kib(address) == s.memory_mb * 1024
            assert await _sh(address, "nproc") == str(expected_cpus)
            assert await _sh(address, "grep -c ^processor /proc/cpuinfo") == str(expected_cpus)
    finally:
        for s in (small, large):
            assert await node.kill(s.sandbox_id)
    assert wait_no_leaks(node.data_dir) == {}


# --- the daemon ------------------------------------------------------------------------


async def test_the_daemon_is_adopted_restarted_and_gone_with_the_node(node_dir: Path) -> None:
    from hearth.node.local import LocalNode

    first = LocalNode(node_dir)
    await first.start()
    s = spec("debian", cpu_count=1, memory_mb=512)
    created = time.monotonic()
    await first.create(s)
    daemon = _lxcfs(first)
    pid, mount = daemon.pid, daemon.mount
    assert pid is not None and not daemon.adopted
    await first.detach()
    # Kept for the sandboxes, which outlive the node process.
    assert Path(f"/proc/{pid}").exists() and os.path.ismount(mount)

    second = LocalNode(node_dir)
    try:
        await second.start()
        daemon = _lxcfs(second)
        assert (daemon.pid, daemon.adopted) == (pid, True)
        address = second.address(s.sandbox_id)
        assert await _mem_total_kib(address) == 512 * 1024
        frozen = spec("debian", cpu_count=1, memory_mb=384)
        await second.create(frozen)
        assert await second.pause(frozen.sandbox_id) is True  # with its memory

        # Its mounts die with it; the node starts it again and binds the new one in,
        # frozen containers' too.
        os.kill(pid, signal.SIGKILL)
        await _until(
            lambda: daemon.pid != pid and daemon.view is not None and not daemon.recovering,
            "lxcfs running again",
        )
        assert await _mem_total_kib(address) == 512 * 1024
        assert await _mem_total_kib(await second.resume(frozen)) == 384 * 1024
        assert await _sh(address, "grep -c ^processor /proc/cpuinfo") == "1"
        uptime = float((await _sh(address, "cat /proc/uptime")).split()[0])
        assert uptime <= time.monotonic() - created + 1
        for path in ("/proc/stat", "/proc/loadavg", "/proc/swaps", "/proc/diskstats"):
            await _sh(address, f"cat {path} >/dev/null")
        # A sandbox started now is bound to the new daemon too.
        t = spec("debian", cpu_count=1, memory_mb=256)
        assert await _mem_total_kib(await second.create(t)) == 256 * 1024
    finally:
        await second.close()
    assert wait_no_leaks(node_dir, closed=True) == {}


async def test_without_lxcfs_sandboxes_see_the_host(
    node_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from hearth.node.local import LocalNode

    monkeypatch.setattr(lxcfs_module, "find_binary", lambda: None)
    caplog.set_level(logging.WARNING, LXCFS_LOGGER)
    async with LocalNode(node_dir) as node:
        assert _lxcfs(node).view is None
        assert any("lxcfs is not installed" in r.getMessage() for r in caplog.records)
        s = spec("debian", cpu_count=1, memory_mb=512)
        address = await node.create(s)
        assert await _mem_total_kib(address) == _host_mem_total_kib()
        # The cpuset is the kernel's: nproc holds without lxcfs.
        assert await _sh(address, "nproc") == "1"
        config = json.loads((node_dir / "sandboxes" / s.sandbox_id / "config.json").read_text())
        assert not {m["destination"] for m in config["mounts"]} & set(LXCFS_FILES)
    assert wait_no_leaks(node_dir, closed=True) == {}


async def test_a_daemon_that_cannot_come_back_leaves_the_host_view_not_dead_mounts(
    node_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from hearth.node.local import LocalNode

    caplog.set_level(logging.WARNING, LXCFS_LOGGER)
    async with LocalNode(node_dir) as node:
        daemon = _lxcfs(node)
        s = spec("debian", cpu_count=1, memory_mb=512)
        address = await node.create(s)
        assert await _mem_total_kib(address) == 512 * 1024

        monkeypatch.setattr(lxcfs_module, "find_binary", lambda: None)  # no restart
        os.kill(daemon.pid, signal.SIGKILL)
        await _until(lambda: daemon.view is None and not daemon.recovering, "the recovery")
        assert any("exited" in r.getMessage() for r in caplog.records)
        # Reads work again, of the host's files.
        assert await _mem_total_kib(address) == _host_mem_total_kib()
        assert await _sh(address, "grep -c ^processor /proc/cpuinfo") == str(os.cpu_count())
        assert await _sh(address, "nproc") == "1"
        # And sandboxes still start, with the host's view.
        t = spec("debian", cpu_count=1, memory_mb=256)
        assert await _mem_total_kib(await node.create(t)) == _host_mem_total_kib()
    assert wait_no_leaks(node_dir, closed=True) == {}


async def test_runc_sandboxes_see_their_own_too(node_dir: Path) -> None:
    from hearth.node.local import LocalNode

    if not shutil.which("runc"):
        pytest.skip("runc is not installed")
    async with LocalNode(node_dir, oci_runtime="runc") as node:
        address = await node.create(spec("debian", cpu_count=1, memory_mb=384))
        assert _free(await _sh(address, "free -m")) == {"Mem": 384, "Swap": 0}
        assert await _sh(address, "nproc") == "1"
    assert wait_no_leaks(node_dir, closed=True) == {}


async def test_a_node_that_detaches_with_no_container_left_releases_the_daemon(
    node_dir: Path,
) -> None:
    from hearth.node.local import LocalNode

    node = LocalNode(node_dir)
    await node.start()
    s = spec("debian", cpu_count=1, memory_mb=256)
    await node.create(s)
    await node.pause(s.sandbox_id, memory=False)  # its files only: nothing bound
    assert _lxcfs(node).pid is not None
    await node.detach()
    found = leaks(node_dir, closed=True)
    assert only_files_left(found, s.sandbox_id), found
    async with LocalNode(node_dir) as again:  # and the next one starts its own
        assert await again.paused() == {s.sandbox_id: False}
        address = await again.resume(s)
        assert await _mem_total_kib(address) == 256 * 1024
    assert wait_no_leaks(node_dir, closed=True) == {}
