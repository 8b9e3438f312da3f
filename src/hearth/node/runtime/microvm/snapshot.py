"""Template snapshots: a booted VM whose envd answers, saved once, cloned many times.

A snapshot is keyed by what the VM is made of (disk image, kernel, command line,
accelerator) and by (vCPUs, memory): the device state of one size does not load into
another. It holds:

- `disk.qcow2`: the template VM's overlay over the raw image, frozen at the snapshot
  (each clone's own overlay is backed by it),
- `device.state`: the device state, saved with `x-ignore-shared` (tens of KiB),
- the guest RAM, a file on /dev/shm mapped shared by the template VM; clones map it
  private (copy-on-write).

/dev/shm does not survive a host reboot, so the boot id is part of the directory's
name: after a reboot the snapshot is taken again beside the old directory, which stays
as long as paused sandboxes' overlays may be backed by its disk.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from hearth.node.disk.cache import STAMP_NAME, locked, progress, read_stamp
from hearth.node.guest import envd_client
from hearth.node.guest.envd_client import ENVD_PORT
from hearth.node.network import NetworkPool
from hearth.node.runtime._threads import to_thread_to_the_end
from hearth.node.runtime.microvm import guestnet
from hearth.node.runtime.microvm.vmm import Machine, Vmm, VmmError
from hearth.template.artifact import Artifact
from hearth.template.builder import template_body, wait_started

log = logging.getLogger(__name__)

RECIPE_VERSION = 2
SHM_DIR = Path("/dev/shm/hearth")


@dataclass(frozen=True)
class Snapshot:
    directory: Path
    machine: Machine
    disk: Path
    device_state: Path
    memory: Path
    key: str


def snapshot_key(image: Path, machine: Machine, artifact: Artifact | None = None) -> str:
    recipe = {
        "version": RECIPE_VERSION,
        "image": str(image),
        "kernel": str(machine.kernel),
        "initramfs": str(machine.initramfs),
        "cmdline": machine.cmdline,
        "cpu": machine.cpu_count,
        "memory": machine.memory_mb,
        "accel": machine.accel,
    }
    if artifact is not None and artifact.start_cmd:
        # Its start command runs before the snapshot: a different command, another one.
        recipe["started"] = artifact.dumps()
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]


async def ensure_snapshot(
    snapshots_dir: Path,
    name: str,
    image: Path,
    machine: Machine,
    pool: NetworkPool,
    boot_timeout: float,
    artifact: Artifact | None = None,
) -> Snapshot:
    """The snapshot of `image` booted as `machine`, taken now if there is none; with the
    `artifact`'s start command running and ready in it, if it has one (as E2B's
    template snapshots hold it: a clone does not start it again)."""
    key = snapshot_key(image, machine, artifact)
    tag = f"{name}-{machine.cpu_count}c{machine.memory_mb}m-{key}-{boot_id()}"
    directory = snapshots_dir / tag
    snapshot = Snapshot(
        directory,
        machine,
        directory / "disk.qcow2",
        directory / "device.state",
        _memory_file(directory),
        key,
    )
    if snapshot_complete(snapshot):
        return snapshot
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    lock = snapshots_dir / f".{tag}.lock"
    # The file lock serialises node processes; it is taken in a thread (it blocks).
    async with _async_locked(lock):
        if not snapshot_complete(snapshot):
            await _take(snapshot, image, pool, boot_timeout, artifact)
    return snapshot


def _memory_file(directory: Path) -> Path:
    """The RAM file of the snapshot in `directory`: named after the directory's path, so
    two nodes (two data directories) never share one; a `.owner` file beside it names
    the directory, for `sweep_memory`."""
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return SHM_DIR / f"{directory.name}-{digest}.mem"


def sweep_memory() -> list[str]:
    """Delete the RAM files whose snapshot directory is gone (a removed data directory)."""
    removed = []
    for owner in SHM_DIR.glob("*.owner") if SHM_DIR.is_dir() else []:
        with contextlib.suppress(OSError):
            if not Path(owner.read_text().strip()).is_dir():
                owner.with_suffix(".mem").unlink(missing_ok=True)
                owner.unlink()
                removed.append(owner.stem)
    return removed


def snapshot_complete(s: Snapshot) -> bool:
    return read_stamp(s.directory) == s.key and s.memory.is_file() and s.device_state.is_file()


@contextlib.asynccontextmanager
async def _async_locked(lock: Path):
    cm = locked(lock)
    try:
        await to_thread_to_the_end(cm.__enter__)
    except asyncio.CancelledError:
        cm.__exit__(None, None, None)  # the thread took the lock for no one
        raise
    try:
        yield
    finally:
        cm.__exit__(None, None, None)


async def _take(
    s: Snapshot, image: Path, pool: NetworkPool, boot_timeout: float, artifact: Artifact | None
) -> None:
    started = time.monotonic()
    progress(
        f"taking the template snapshot {s.directory.name} ({s.machine.accel}; a cold boot"
        f"{' takes a while under TCG' if s.machine.accel == 'tcg' else ''})"
    )
    shutil.rmtree(s.directory, ignore_errors=True)
    s.directory.mkdir(parents=True)
    SHM_DIR.mkdir(mode=0o700, exist_ok=True)
    s.memory.unlink(missing_ok=True)
    s.memory.with_suffix(".owner").write_text(f"{s.directory.resolve()}\n")
    async with contextlib.AsyncExitStack() as stack:
        slot = await to_thread_to_the_end(
            pool.acquire,
            taken=lambda slot: stack.push_async_callback(asyncio.to_thread, slot.release),
        )
        await asyncio.to_thread(guestnet.attach, slot.netns_path, slot.address)
        await asyncio.to_thread(create_overlay, s.disk, image, "raw")
        vmm = Vmm(s.directory, slot.netns_path)
        argv = vmm.argv(s.machine, s.disk, memory="template", mem_path=s.memory)
        stack.push_async_callback(vmm.quit)
        await to_thread_to_the_end(vmm.launch, argv)
        await vmm.connect()
        await wait_envd(vmm, slot.address, boot_timeout)
        if artifact is not None and artifact.start_cmd:
            url = f"http://{slot.address}:{ENVD_PORT}"
            progress(f"running the template's start command: {artifact.start_cmd}")
            await envd_client.init(url, template_body(artifact), timeout=boot_timeout)
            await wait_started(url, artifact, interval=0.5, timeout=boot_timeout)
        await warm_envd(slot.address)
        await vmm.ignore_shared(True)
        await vmm.save(s.device_state)
    (s.directory / STAMP_NAME).write_text(s.key + "\n")
    progress(f"template snapshot ready in {time.monotonic() - started:.1f} s")


async def wait_envd(vmm: Vmm, address: str, timeout: float) -> None:
    """Until envd answers /health through the slot; a QEMU that exits fails at once."""
    try:
        await envd_client.wait_healthy(
            f"http://{address}:{ENVD_PORT}",
            timeout=timeout,
            dead=lambda: None if vmm.alive() else "the VM exited",
            interval=0.01,
        )
    except envd_client.EnvdError as e:
        raise VmmError(f"{e}{vmm.log_tail()}") from None


async def warm_envd(address: str) -> None:
    """Make envd import what the first command and file calls need before the snapshot,
    so that no clone pays for it (under TCG, imports take seconds)."""
    base = f"http://{address}:{ENVD_PORT}"
    headers = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
    async with _client() as client:
        with contextlib.suppress(httpx.HTTPError):
            await client.get(f"{base}/envs", timeout=60)
            # What /init imports on first use (clock, entropy), with no token or state.
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            entropy = base64.b64encode(os.urandom(32)).decode()
            await client.post(
                f"{base}/init", json={"timestamp": now, "entropy": entropy}, timeout=60
            )
            await client.post(
                f"{base}/process.Process/List", headers=headers, content=b"{}", timeout=60
            )
            await client.post(
                f"{base}/filesystem.Filesystem/Stat",
                headers=headers,
                content=b'{"path": "/"}',
                timeout=60,
            )


def create_overlay(path: Path, backing: Path, backing_format: str) -> None:
    done = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", str(backing),
         str(path)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise VmmError(f"qemu-img create failed: {done.stderr.strip()}")


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=2.0), verify=False, trust_env=False
    )
