"""The `microvm` runtime: each sandbox is a QEMU microVM cloned from a template snapshot.

A sandbox is assembled on one `AsyncExitStack`, each piece registering its release the
moment it is acquired:

1. its directory `data_dir/microvm/sandboxes/ID` (qcow2 overlay, record, logs, the
   memory state of a pause), released last;
2. the VM's part, on a nested stack closed by pause as well as by stop: the network
   slot with its tap and translation, the QEMU process, its QMP connection and the
   watcher that notices a crashed QEMU.

Create takes a pre-spawned VMM from the pool of its snapshot (a QEMU waiting with
`-incoming defer` in its own slot, over its own overlay) or spawns one, loads the
snapshot's device state over the template RAM mapped copy-on-write, continues it and
calls envd's /init (token, environment, clock, fresh entropy). Pause with memory saves
the whole VM to `memory.state` and lets go of the VMM and the slot; resume starts a new
QEMU from that file. Without memory, pause keeps the overlay only and resume boots it.
The record in the directory lets a restarted node adopt running VMs and paused ones.

A snapshot (`snapshot`) captures a sandbox, running or paused, as a saved state of the
driver's own (`saved.py`): a copy of its disk and, with memory, the whole VM. A create
whose artifact names one (`Artifact.saved`) restores it into a new sandbox, as a resume
restores a pause: a new overlay over the saved disk, a new slot, a QEMU that loads the
state or boots the disk cold. A forgotten saved state goes once nothing is backed by it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import httpx

from hearth.node.disk.image import ensure_image
from hearth.node.guest import envd_client
from hearth.node.guest.envd_bundle import ensure_bundle
from hearth.node.guest.envd_client import ENVD_PORT, init_body
from hearth.node.guest.kernel import CANARY_MARKER, GuestKernel, ensure_kernel
from hearth.node.interface import SandboxAddress, SandboxSpec
from hearth.node.network import NetworkPool, NetworkSlot
from hearth.node.network.policy import Egress
from hearth.node.network.resolvers import sandbox_resolvers
from hearth.node.network.slots import DEFAULT_POOL, DEFAULT_PREFIX
from hearth.node.runtime import hardware_virtualization
from hearth.node.runtime._threads import threaded_release, to_thread_to_the_end
from hearth.node.runtime.microvm import guestnet, saved
from hearth.node.runtime.microvm.saved import MEMORY_STATE, SavedState
from hearth.node.runtime.microvm.snapshot import (
    Snapshot,
    create_overlay,
    ensure_snapshot,
    snapshot_complete,
    sweep_memory,
    wait_envd,
)
from hearth.node.runtime.microvm.vmm import KERNEL_ARGS, Machine, Vmm
from hearth.template.artifact import Artifact
from hearth.template.builder import wait_started

log = logging.getLogger(__name__)
T = TypeVar("T")

RECORD = "record.json"
OVERLAY = "overlay.qcow2"
# Pre-spawned VMMs kept per snapshot. Each holds a slot and an idle QEMU (a few MiB).
POOL_SIZE = 2
ENTROPY_BYTES = 64
# The slots' interface prefix and rules table: the container runtime's, so one rule set
# serves a node whichever runtime it runs (tests choose their own).
SLOT_PREFIX = DEFAULT_PREFIX
RULES_TABLE = "hearth"


class MicroVMError(RuntimeError):
    pass


@dataclass
class VmRecord:
    """What a restarted node needs to adopt a VM, running or paused."""

    sandbox_id: str
    template_id: str
    state: str  # "starting" (restoring a saved state), "running" or "paused"
    memory: bool  # for "paused": the memory state file holds the whole VM
    machine: dict
    snapshot: str  # the template snapshot's directory, or the saved state's
    allow_internet: bool = True  # records of earlier versions; now in `egress`
    slot_index: int = -1
    qemu_pid: int | None = None
    vmm_name: str = ""  # QEMU's -name (hearth-NAME), to recognise it after a restart
    created_at: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)
    artifact: dict | None = None  # its template's (a cold resume starts it again)
    # envd's token, which its RAM holds: a snapshot's restores show it to the first /init.
    envd_token: str | None = None
    egress: dict | None = None  # its `Egress`, as JSON

    def machine_(self) -> Machine:
        m = dict(self.machine)
        return Machine(**{**m, "kernel": Path(m["kernel"]), "initramfs": Path(m["initramfs"])})


# --- the sandbox ---------------------------------------------------------------------


class MicroVMSandbox:
    """A running VM. `stop()` releases everything, once; `pause()` keeps the directory."""

    def __init__(self, driver: MicroVMDriver, record: VmRecord, directory: Path) -> None:
        self._driver = driver
        self.record = record
        self.directory = directory
        self.slot: NetworkSlot | None = None
        self.vmm: Vmm | None = None
        self.release_errors: list[BaseException] = []
        self._stack = contextlib.AsyncExitStack()
        self._vm_stack = contextlib.AsyncExitStack()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        # How its start went, in ms (diagnostics and bench/microvm.py).
        self.timings: dict[str, float | str] = {}

    @property
    def sandbox_id(self) -> str:
        return self.record.sandbox_id

    @property
    def artifact(self) -> Artifact | None:
        """What the sandbox was created from (its template's start command)."""
        return _artifact_of(self.record)

    @property
    def address(self) -> SandboxAddress:
        assert self.slot is not None
        return SandboxAddress(self.slot.address)

    def push(self, what: str, release, *args, vm: bool = True) -> None:
        """Register a blocking release (run in a thread; a failure is logged and kept)."""
        run = threaded_release(self.sandbox_id, what, self.release_errors, release, *args)
        (self._vm_stack if vm else self._stack).push_async_callback(run)

    async def stop(self) -> None:
        """Kill the VM and release everything it holds, once."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._unwatch()
        try:
            await asyncio.shield(self._stack.aclose())
        finally:
            self._stopped.set()

    async def set_egress(self, egress: Egress) -> None:
        """Replace what the running VM may reach, and keep it in its record."""
        assert self.slot is not None
        await asyncio.to_thread(self.slot.set_egress, egress)
        self.record.egress = egress.to_json()
        await asyncio.to_thread(_write_record, self.directory, self.record)

    async def pause(self, memory: bool) -> PausedMicroVM:
        vmm = self.vmm
        assert vmm is not None
        self._unwatch()
        state = self.directory / MEMORY_STATE
        try:
            if memory:
                await vmm.ignore_shared(False)
                await vmm.save(state)
            else:
                await _sync_guest(self.address, self._driver.token_of(self.sandbox_id))
        except BaseException:
            # The sandbox goes on running as it was.
            state.unlink(missing_ok=True)
            try:
                with contextlib.suppress(Exception):
                    await _to_the_end(vmm.go_on())
            finally:
                self._watch()
            raise
        # Recorded as paused before QEMU goes: a node that dies in between finds a paused
        # sandbox (and the QEMU to kill), never a "running" one to remove with its state.
        self.record.state = "paused"
        self.record.memory = memory
        await asyncio.to_thread(_write_record, self.directory, self.record)
        # The VM's part goes (QEMU, QMP, slot); the directory stays, on the paused one.
        await self._vm_stack.aclose()
        self.record.qemu_pid = None
        self.record.slot_index = -1
        await asyncio.to_thread(_write_record, self.directory, self.record)
        paused = PausedMicroVM(self._driver, self.record, self.directory, self._stack.pop_all())
        self._stopping = True
        self._stopped.set()
        return paused

    # --- crash detection -------------------------------------------------------------

    def _watch(self) -> None:
        assert self.vmm is not None
        exited = self.vmm.exited()

        async def watch() -> None:
            await exited
            if not self._stopping:
                log.error(
                    "sandbox %s: QEMU exited unexpectedly; releasing what it held%s",
                    self.sandbox_id,
                    self.vmm.log_tail() if self.vmm else "",
                )
                self._driver.forget(self.sandbox_id)
                await self.stop()

        self._watcher = asyncio.get_running_loop().create_task(watch())

    def _unwatch(self) -> None:
        if self.vmm is not None:
            self.vmm.unwatch()
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None


class PausedMicroVM:
    """A paused VM: its directory (overlay, and with `memory` the state file)."""

    def __init__(
        self,
        driver: MicroVMDriver,
        record: VmRecord,
        directory: Path,
        stack: contextlib.AsyncExitStack,
    ) -> None:
        self._driver = driver
        self.record = record
        self.directory = directory
        self._stack = stack
        self._done = False

    @property
    def sandbox_id(self) -> str:
        return self.record.sandbox_id

    @property
    def artifact(self) -> Artifact | None:
        """What the sandbox was created from (its template's start command)."""
        return _artifact_of(self.record)

    @property
    def memory(self) -> bool:
        return self.record.memory

    async def resume(self, spec: SandboxSpec) -> MicroVMSandbox:
        if self._done:
            raise MicroVMError(f"sandbox {self.sandbox_id} was already resumed or discarded")
        sandbox = await self._driver.resume(self, spec)
        self._done = True
        return sandbox

    def take_stack(self) -> contextlib.AsyncExitStack:
        return self._stack.pop_all()

    async def discard(self) -> None:
        if self._done:
            return
        self._done = True
        await self._stack.aclose()


# --- pre-spawned VMMs ----------------------------------------------------------------


@dataclass
class _Pooled:
    directory: Path
    slot: NetworkSlot
    vmm: Vmm
    stack: contextlib.AsyncExitStack


class _VmmPool:
    """Per snapshot, VMMs waiting with `-incoming defer`, each in its own slot over its
    own overlay; refilled in the background after every take."""

    def __init__(self, driver: MicroVMDriver, size: int) -> None:
        self._driver = driver
        self.size = size
        self._ready: dict[str, list[_Pooled]] = {}
        self._filling: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def take(self, snapshot: Snapshot) -> _Pooled | None:
        """A ready VMM, or None. The caller refills (`refill`) once its create is done:
        spawning the next QEMU meanwhile would compete with it for the CPU."""
        ready = self._ready.get(snapshot.key, [])
        while ready:
            pooled = ready.pop()
            if pooled.vmm.alive():
                return pooled
            asyncio.get_running_loop().create_task(pooled.stack.aclose())
        return None

    def refill(self, snapshot: Snapshot) -> None:
        if self._closed or self.size <= 0:
            return
        task = self._filling.get(snapshot.key)
        if task is not None and not task.done():
            return
        self._filling[snapshot.key] = asyncio.get_running_loop().create_task(self._fill(snapshot))

    async def _fill(self, snapshot: Snapshot) -> None:
        ready = self._ready.setdefault(snapshot.key, [])
        while not self._closed and len(ready) < self.size:
            try:
                pooled = await self._driver.spawn_clone(snapshot)
            except Exception as e:
                log.warning("could not pre-spawn a VMM for %s: %s", snapshot.directory.name, e)
                return
            if self._closed:
                await pooled.stack.aclose()
                return
            ready.append(pooled)

    async def resize(self, size: int) -> None:
        """Keep at most `size` VMMs per snapshot from now on; the extra ones go."""
        self.size = size
        extra = []
        for ready in self._ready.values():
            while len(ready) > size:
                extra.append(ready.pop())
        await asyncio.gather(*(p.stack.aclose() for p in extra), return_exceptions=True)

    def count(self) -> int:
        return sum(len(r) for r in self._ready.values())

    async def close(self) -> None:
        self._closed = True
        for task in self._filling.values():
            task.cancel()
        await asyncio.gather(*self._filling.values(), return_exceptions=True)
        pooled = [p for r in self._ready.values() for p in r]
        self._ready.clear()
        await asyncio.gather(*(p.stack.aclose() for p in pooled), return_exceptions=True)


# --- the driver ----------------------------------------------------------------------


class MicroVMDriver:
    """Starts, pauses, resumes and adopts microVM sandboxes under `data_dir/microvm`."""

    # A clone's template start command already runs: it is in the snapshot.
    starts_templates = True

    def __init__(
        self,
        data_dir: Path,
        cache_dir: Path | None = None,
        bundle_dir: Path | None = None,
        *,
        network_pool: str = DEFAULT_POOL,
        blocked_networks: tuple[str, ...] | None = None,
        start_timeout: float = 60.0,
        dns_servers: list[str] | None = None,
        slot_rules: dict | None = None,
        pool_size: int = POOL_SIZE,
        boot_timeout: float = 600.0,
        extra_ca: str | None = None,
        **_container_only: object,
    ) -> None:
        """`extra_ca`: a CA certificate (PEM) every guest trusts besides its template's
        (the local CA), given to envd's /init as E2B's orchestrator gives its own."""
        self.base_dir = Path(data_dir) / "microvm"
        self.sandboxes_dir = self.base_dir / "sandboxes"
        self.pool_dir = self.base_dir / "pool"
        self.snapshots_dir = self.base_dir / "snapshots"
        self.saved_dir = self.base_dir / "saved"
        self._netns_dir = Path(data_dir) / "netns"
        self._cache_dir = cache_dir
        self._bundle_dir = bundle_dir
        self._pool_cidr = network_pool
        self._blocked = blocked_networks
        self.start_timeout = start_timeout
        self.boot_timeout = boot_timeout
        self._dns = dns_servers
        self._slot_rules = slot_rules or {}
        self._extra_ca = extra_ca
        self.accel = "tcg"
        self.kernel: GuestKernel | None = None
        self.bundle: Path | None = None
        self.network: NetworkPool | None = None
        self.vmms = _VmmPool(self, pool_size)
        self._tokens: dict[str, str | None] = {}
        self._live: dict[str, MicroVMSandbox] = {}
        self._adopted_paused: dict[str, PausedMicroVM] = {}
        self._snapshot_locks: dict[str, asyncio.Lock] = {}
        self._snapshots: dict[str, Snapshot] = {}
        # Held while a restore makes its overlay over a saved disk, while a capture puts
        # its state in place and while forgotten states are deleted: the deletion sees
        # every image backed by a saved disk.
        self._saved_lock = asyncio.Lock()

    # --- setup -----------------------------------------------------------------------

    async def setup(self) -> None:
        from hearth.node.network.rules import DEFAULT_BLOCKED

        for d in (self.sandboxes_dir, self.pool_dir, self.snapshots_dir, self.saved_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o700)
        self.kernel = await asyncio.to_thread(ensure_kernel, self._cache_dir)
        self.bundle = await asyncio.to_thread(ensure_bundle, self._bundle_dir)
        self.accel = await asyncio.to_thread(detect_accel, self.kernel)
        pool = NetworkPool(
            self._netns_dir,
            self._pool_cidr,
            blocked=self._blocked if self._blocked is not None else DEFAULT_BLOCKED,
            interface_prefix=SLOT_PREFIX,
            table=RULES_TABLE,
            **self._slot_rules,
        )
        await asyncio.to_thread(pool.setup)
        self.network = pool
        for name in await asyncio.to_thread(sweep_memory):
            log.info("removed the RAM file of snapshot %s (its directory is gone)", name)
        for name in await asyncio.to_thread(saved.sweep_partial, self.saved_dir):
            log.info("removed the half-written saved state %s", name)

    def machine(self, cpu_count: int, memory_mb: int) -> Machine:
        assert self.kernel is not None
        dns = sandbox_resolvers(self._dns)
        return Machine(
            kernel=self.kernel.vmlinux,
            initramfs=self.kernel.initramfs,
            cmdline=f"{KERNEL_ARGS} {guestnet.kernel_args(dns)}",
            cpu_count=max(1, cpu_count),
            memory_mb=max(128, memory_mb),
            accel=self.accel,
        )

    async def template_snapshot(
        self,
        artifact: Artifact,
        layers: list[Path],
        cpu_count: int,
        memory_mb: int,
        disk_mb: int | None = None,
    ) -> Snapshot:
        """The template snapshot for (the template's artifact, vCPUs, memory, disk),
        taken on first use: booted, with the template's start command running and ready.
        The disk has `disk_mb` free for the sandbox's writes (a default without it)."""
        assert self.bundle is not None and self.network is not None
        wanted = f"{artifact.dumps()}/{cpu_count}/{memory_mb}/{disk_mb}"
        known = self._snapshots.get(wanted)
        if known is not None and snapshot_complete(known):
            return known  # the common case: no hashing, no locks
        name = artifact.key
        image = await asyncio.to_thread(
            ensure_image, name, layers, self.bundle, self._cache_dir, disk_mb
        )
        machine = self.machine(cpu_count, memory_mb)
        async with self._snapshot_locks.setdefault(wanted, asyncio.Lock()):
            snapshot = await ensure_snapshot(
                self.snapshots_dir,
                name,
                image,
                machine,
                self.network,
                self.boot_timeout,
                artifact,
            )
        self._snapshots[wanted] = snapshot
        return snapshot

    async def warm(
        self,
        artifact: Artifact,
        layers: list[Path],
        cpu_count: int,
        memory_mb: int,
        disk_mb: int | None = None,
    ) -> None:
        """Take the template snapshot of that shape now and pre-spawn its VMMs, so that
        the first create does not wait for a cold boot (seconds under TCG)."""
        snapshot = await self.template_snapshot(artifact, layers, cpu_count, memory_mb, disk_mb)
        self.vmms.refill(snapshot)

    # --- create ----------------------------------------------------------------------

    async def start(self, spec: SandboxSpec, layers: list[Path]) -> MicroVMSandbox:
        """A sandbox of `spec`: a clone of its template snapshot, or with the artifact's
        `saved` set a restore of that saved state (`layers` unused then)."""
        _check_id(spec.sandbox_id)
        assert spec.artifact is not None
        if spec.artifact.saved:
            return await self._restore(spec)
        snapshot = await self.template_snapshot(
            spec.artifact, layers, spec.cpu_count, spec.memory_mb, spec.disk_mb
        )
        started = time.monotonic()
        pooled = self.vmms.take(snapshot)
        pool_note = "pooled VMM"
        if pooled is None:
            pooled = await self.spawn_clone(snapshot)
            pool_note = "cold VMM"
        directory = self.sandboxes_dir / spec.sandbox_id
        record = VmRecord(
            sandbox_id=spec.sandbox_id,
            template_id=spec.template_id,
            state="running",
            memory=False,
            machine=_machine_dict(snapshot.machine),
            snapshot=str(snapshot.directory),
            egress=spec.egress.to_json(),
            created_at=time.time(),
            metadata=dict(spec.metadata),
            artifact=spec.artifact.to_json() if spec.artifact else None,
            envd_token=spec.envd_access_token,
        )
        sandbox = MicroVMSandbox(self, record, directory)
        renamed = False

        async def remove_directory() -> None:
            if renamed:  # before that, a directory of this name is not this sandbox's
                await _rmtree_if_there(directory)

        self._collect_after(sandbox._stack)
        sandbox._stack.push_async_callback(remove_directory)
        await sandbox._stack.enter_async_context(sandbox._vm_stack)
        sandbox._vm_stack.push_async_callback(pooled.stack.aclose)
        sandbox.slot, sandbox.vmm = pooled.slot, pooled.vmm
        try:
            # The pooled VMM's directory becomes the sandbox's (QEMU keeps its open files
            # and named them relative to its working directory).
            await asyncio.to_thread(pooled.directory.rename, directory)
            renamed = True
            pooled.vmm.directory = directory
            await asyncio.to_thread(pooled.slot.set_egress, spec.egress)
            await pooled.vmm.load(snapshot.device_state, timeout=self.start_timeout)
            running = time.monotonic()
            record.slot_index = pooled.slot.index
            record.qemu_pid = pooled.vmm.pid
            record.vmm_name = pooled.vmm.name
            await asyncio.to_thread(_write_record, directory, record)
            await self._init(sandbox, spec)
            self._started(sandbox, "created", pool_note, started, running)
        except BaseException:
            await sandbox.stop()
            raise
        finally:
            self.vmms.refill(snapshot)
        return sandbox

    async def spawn_clone(self, snapshot: Snapshot) -> _Pooled:
        """A QEMU over a new overlay in a new slot, mapping the snapshot's RAM private and
        waiting for its device state (`-incoming defer`), its QMP connected."""
        assert self.network is not None
        directory = self.pool_dir / secrets.token_hex(8)
        stack = contextlib.AsyncExitStack()
        try:
            directory.mkdir(mode=0o700)
            stack.push_async_callback(_rmtree_if_there, directory)
            slot = await _take(stack, self.network.acquire)
            await to_thread_to_the_end(guestnet.attach, slot.netns_path, slot.address)
            overlay = directory / OVERLAY
            await to_thread_to_the_end(create_overlay, overlay, snapshot.disk, "qcow2")
            vmm = Vmm(directory, slot.netns_path)
            argv = vmm.argv(
                snapshot.machine,
                overlay.name,  # relative: the directory is renamed when the VMM is taken
                memory="clone",
                mem_path=snapshot.memory,
                incoming="defer",
            )
            stack.push_async_callback(vmm.quit)
            await to_thread_to_the_end(vmm.launch, argv)
            await vmm.connect()
            await vmm.ignore_shared(True)
            (directory / "qemu.pid").write_text(f"{vmm.pid}\n")
        except BaseException:
            await stack.aclose()
            raise
        return _Pooled(directory, slot, vmm, stack)

    async def _init(
        self, sandbox: MicroVMSandbox, spec: SandboxSpec, held_token: str | None = None
    ) -> None:
        """envd's /init after a restore: token, environment, clock, entropy. `held_token`:
        the one envd holds, if not the spec's (a restore of another sandbox's memory)."""
        assert sandbox.slot is not None
        self._tokens[spec.sandbox_id] = spec.envd_access_token
        url = f"http://{sandbox.slot.address}:{ENVD_PORT}"
        await init_envd(url, spec, self.start_timeout, held_token, ca=self._extra_ca)
        self._live[spec.sandbox_id] = sandbox
        sandbox.push("its place in the driver", self.forget, spec.sandbox_id)
        sandbox._watch()

    def token_of(self, sandbox_id: str) -> str | None:
        return self._tokens.get(sandbox_id)

    def forget(self, sandbox_id: str) -> None:
        self._live.pop(sandbox_id, None)

    # --- resume and restore ----------------------------------------------------------

    async def resume(self, paused: PausedMicroVM, spec: SandboxSpec) -> MicroVMSandbox:
        record = paused.record
        directory = paused.directory
        record.egress = spec.egress.to_json()
        sandbox = MicroVMSandbox(self, record, directory)
        sandbox._stack = paused.take_stack()
        state = directory / MEMORY_STATE
        try:
            await self._boot(sandbox, spec, state if record.memory else None, "resumed")
        except BaseException:
            # Still paused: the directory and its state stay with the paused sandbox.
            await sandbox._vm_stack.aclose()
            paused._stack = sandbox._stack.pop_all()
            record.state, record.qemu_pid, record.slot_index = "paused", None, -1
            await asyncio.to_thread(_write_record, directory, record)
            raise
        await asyncio.to_thread(state.unlink, True)
        return sandbox

    async def _restore(self, spec: SandboxSpec) -> MicroVMSandbox:
        """A new sandbox of the saved state the spec's artifact names: its own overlay
        over the saved disk, the saved VM loaded into it (or its disk booted, and the
        template's start command run again)."""
        artifact = spec.artifact
        assert artifact is not None and artifact.saved
        directory = self.sandboxes_dir / spec.sandbox_id
        sandbox: MicroVMSandbox | None = None
        try:
            async with self._saved_lock:
                state = await asyncio.to_thread(self._saved_state, artifact.saved)
                record = VmRecord(
                    sandbox_id=spec.sandbox_id,
                    template_id=spec.template_id,
                    state="starting",
                    memory=state.memory,
                    machine=state.machine,
                    snapshot=str(state.directory),
                    egress=spec.egress.to_json(),
                    created_at=time.time(),
                    metadata=dict(spec.metadata),
                    artifact=artifact.to_json(),
                    envd_token=spec.envd_access_token,
                )
                sandbox = MicroVMSandbox(self, record, directory)
                self._collect_after(sandbox._stack)
                directory.mkdir(mode=0o700)  # fails for an id in use: not this sandbox's
                sandbox._stack.push_async_callback(_rmtree_if_there, directory)
                # Made under the lock: from now on the saved disk has a user to be seen.
                await to_thread_to_the_end(
                    create_overlay, directory / OVERLAY, state.disk.resolve(), "qcow2"
                )
            await asyncio.to_thread(_write_record, directory, record)
            memory = state.memory_state if state.memory else None
            what = f"restored from {state.name}"
            await self._boot(sandbox, spec, memory, what, state.envd_token if memory else None)
            if memory is None and artifact.start_cmd:
                # A cold boot starts the template's services again (LocalNode.resume does
                # so for cold resumes; for starts it leaves it to this runtime).
                address = sandbox.address
                await wait_started(
                    f"http://{address.host}:{address.port(ENVD_PORT)}",
                    artifact,
                    access_token=spec.envd_access_token,
                    wait_default=False,
                )
        except BaseException:
            if sandbox is not None:
                await sandbox.stop()
            raise
        return sandbox

    async def _boot(
        self,
        sandbox: MicroVMSandbox,
        spec: SandboxSpec,
        state: Path | None,
        what: str,
        held_token: str | None = None,
    ) -> None:
        """Run the VM over `sandbox`'s overlay in a new slot: QEMU loading the whole VM
        from `state`, or booting the disk cold; then envd's /init. What it takes goes on
        the sandbox's VM stack, which the caller closes if this fails."""
        assert self.network is not None
        record, directory = sandbox.record, sandbox.directory
        started = time.monotonic()
        await sandbox._stack.enter_async_context(sandbox._vm_stack)
        vm = sandbox._vm_stack
        slot = await _take(vm, lambda: self.network.acquire(spec.egress))
        sandbox.slot = slot
        await to_thread_to_the_end(guestnet.attach, slot.netns_path, slot.address)
        vmm = Vmm(directory, slot.netns_path)
        incoming = "defer" if state is not None else None
        argv = vmm.argv(record.machine_(), OVERLAY, memory="private", incoming=incoming)
        vm.push_async_callback(vmm.quit)
        await to_thread_to_the_end(vmm.launch, argv)
        sandbox.vmm = vmm
        # A node that dies from here on leaves its successor the QEMU to kill.
        record.qemu_pid, record.vmm_name = vmm.pid, vmm.name
        await asyncio.to_thread(_write_record, directory, record)
        await vmm.connect()
        if state is not None:
            await vmm.load(state, timeout=self.start_timeout)
        else:
            await wait_envd(vmm, slot.address, self.boot_timeout)
        record.state = "running"
        record.slot_index = slot.index
        record.envd_token = spec.envd_access_token
        await asyncio.to_thread(_write_record, directory, record)
        running = time.monotonic()
        await self._init(sandbox, spec, held_token)
        how = "memory" if state is not None else "cold boot"
        self._started(sandbox, what, how, started, running)

    def _started(
        self, sandbox: MicroVMSandbox, what: str, how: str, started: float, running: float
    ) -> None:
        """Note how a start went, in `sandbox.timings` and the log."""
        ready = time.monotonic()
        sandbox.timings = {
            "vmm": how,
            "running_ms": (running - started) * 1000,
            "ready_ms": (ready - started) * 1000,
        }
        log.info(
            "sandbox %s %s (%s, %s): running %.0f ms, envd ready %.0f ms after the request",
            sandbox.sandbox_id,
            what,
            how,
            self.accel,
            (running - started) * 1000,
            (ready - started) * 1000,
        )

    # --- snapshots of sandboxes ------------------------------------------------------

    async def capture(
        self,
        held: object,
        artifact: Artifact,
        memory: bool,
        layers: object,
    ) -> Artifact:
        """`Node.snapshot` on this runtime: the VM's saved state, which creates restore
        (the artifact's layers stay the source's, to say what it was made of)."""
        # The node's protocol types `held` as any sandbox; it is always one of ours.
        assert isinstance(held, MicroVMSandbox | PausedMicroVM), "not a microVM sandbox"
        name, kept = await self.snapshot(held, memory)
        return replace(artifact, saved=name, memory=kept)

    async def snapshot(
        self, sandbox: MicroVMSandbox | PausedMicroVM, memory: bool
    ) -> tuple[str, bool]:
        """Capture `sandbox` as a saved state of its own, to start new sandboxes from;
        returns its name and whether it holds the memory (not when the sandbox is paused
        to its files only). A running sandbox stops for the capture only, then goes on
        (its processes, and envd's streams); a paused one stays paused."""
        name = "s" + secrets.token_hex(12)
        partial = self.saved_dir / f"{saved.PARTIAL_PREFIX}{name}"
        record = sandbox.record
        running = isinstance(sandbox, MicroVMSandbox)
        kept = memory and (running or record.memory)
        token = self.token_of(record.sandbox_id) or record.envd_token
        started = time.monotonic()
        try:
            partial.mkdir(mode=0o700)
            if isinstance(sandbox, MicroVMSandbox):
                await self._capture(sandbox, partial, kept, token)
            else:
                await to_thread_to_the_end(_capture_paused, sandbox.directory, partial, kept)
            state = SavedState(partial, record.machine, record.artifact, kept, token)
            await asyncio.to_thread(saved.write, partial, state)
            async with self._saved_lock:
                partial.rename(self.saved_dir / name)
        except BaseException:
            await _rmtree_if_there(partial)
            raise
        log.info(
            "sandbox %s saved as %s (%s, %s) in %.0f ms",
            record.sandbox_id,
            name,
            "memory" if kept else "disk only",
            "running" if running else "paused",
            (time.monotonic() - started) * 1000,
        )
        return name, kept

    async def _capture(
        self, sandbox: MicroVMSandbox, into: Path, memory: bool, token: str | None
    ) -> None:
        """Stop the guest, save it (with `memory` the whole VM, else its disk synced
        first), copy its disk, and let it go on, whatever happened."""
        vmm = sandbox.vmm
        assert vmm is not None
        if not memory:
            await _sync_guest(sandbox.address, token)
        try:
            if memory:
                # A clone's RAM is a private mapping of the template's: all of it goes.
                await vmm.ignore_shared(False)
                await vmm.save(into / MEMORY_STATE)
            else:
                await vmm.execute("stop")
            # Stopped, QEMU has written back what it held of the overlay (a completed
            # migration flushes and lets go of its disks; `stop` flushes them).
            await to_thread_to_the_end(
                saved.copy_disk, sandbox.directory / OVERLAY, into / saved.DISK
            )
        finally:
            await _to_the_end(vmm.go_on())
        await _set_guest_clock(sandbox.address, token)

    def has_saved(self, name: str) -> bool:
        """Whether the saved state `name` is here, complete and not forgotten."""
        if not saved.valid_name(name):
            return False
        directory = self.saved_dir / name
        return saved.read(directory) is not None and not saved.forgotten(directory)

    def _saved_state(self, name: str) -> SavedState:
        directory = self.saved_dir / name
        state = saved.read(directory) if saved.valid_name(name) else None
        if state is None or saved.forgotten(directory):
            raise MicroVMError(f"the saved state {name!r} is not on this node")
        return state

    async def forget_saved(self, names: list[str]) -> None:
        """The saved states `names` are no longer wanted: each goes once no sandbox here
        (running or paused) and no other saved state is backed by its disk."""
        for name in names:
            directory = self.saved_dir / name
            if saved.valid_name(name) and directory.is_dir():
                await asyncio.to_thread(saved.forget, directory)
        await self._collect_saved()

    def _collect_after(self, stack: contextlib.AsyncExitStack) -> None:
        """Check the forgotten saved states once the sandbox of `stack` is gone (pushed
        before its directory's removal, so it runs after it)."""
        stack.push_async_callback(self._collect_saved)

    async def _collect_saved(self) -> None:
        def collect() -> list[str]:
            overlays = [d / OVERLAY for d in self.sandboxes_dir.iterdir()]
            return saved.collect(self.saved_dir, overlays)

        try:
            async with self._saved_lock:
                removed = await to_thread_to_the_end(collect)
        except Exception as e:
            log.error("could not delete the forgotten saved states: %s", e)
            return
        for name in removed:
            log.info("deleted the forgotten saved state %s", name)

    # --- adopt and clean up ----------------------------------------------------------

    async def reconcile(self) -> tuple[dict[str, MicroVMSandbox], list[str]]:
        """Adopt running VMs a previous node process left, keep paused ones for
        `reconcile_paused`, remove the rest (and every pre-spawned VMM)."""
        assert self.network is not None
        adopted: dict[str, MicroVMSandbox] = {}
        removed: list[str] = []
        for directory in sorted(self.pool_dir.iterdir()):
            await asyncio.to_thread(_kill_recorded, directory / "qemu.pid", directory.name)
            await _rmtree_if_there(directory)
            removed.append(f"pre-spawned VMM {directory.name}")
        for directory in sorted(self.sandboxes_dir.iterdir()):
            record = _read_record(directory)
            if record is not None and record.state == "paused":
                if record.qemu_pid:  # the node died while pausing it
                    await asyncio.to_thread(_kill_recorded_pid, record.qemu_pid, record.vmm_name)
                    record.qemu_pid, record.slot_index = None, -1
                paused = PausedMicroVM(self, record, directory, contextlib.AsyncExitStack())
                self._collect_after(paused._stack)
                paused._stack.push_async_callback(_rmtree_if_there, directory)
                self._adopted_paused[record.sandbox_id] = paused
                continue
            sandbox = await self._adopt(directory, record) if record else None
            if record is not None and sandbox is not None:
                adopted[record.sandbox_id] = sandbox
                continue
            if record and record.qemu_pid:
                await asyncio.to_thread(_kill_recorded_pid, record.qemu_pid, record.vmm_name)
            await _rmtree_if_there(directory)
            removed.append(f"sandbox {directory.name}")
        keep = {s.slot.index for s in adopted.values() if s.slot}
        swept = await asyncio.to_thread(self.network.sweep, keep)
        removed += [f"network slot {n}" for n in swept]
        # What a previous node forgot and its sandboxes held, now perhaps held no more.
        await self._collect_saved()
        return adopted, removed

    async def _adopt(self, directory: Path, record: VmRecord) -> MicroVMSandbox | None:
        assert self.network is not None
        if record.state != "running" or not record.qemu_pid or record.slot_index < 0:
            return None
        if not _is_our_qemu(record.qemu_pid, record.vmm_name):
            return None
        sandbox = MicroVMSandbox(self, record, directory)
        try:
            self._collect_after(sandbox._stack)
            sandbox.push("its directory", shutil.rmtree, directory, vm=False)
            await sandbox._stack.enter_async_context(sandbox._vm_stack)
            slot = await _take(
                sandbox._vm_stack,
                lambda: self.network.adopt(record.slot_index, _recorded_egress(record)),
            )
            sandbox.slot = slot
            vmm = Vmm(directory, slot.netns_path, record.vmm_name)
            vmm.adopt(record.qemu_pid)
            sandbox._vm_stack.push_async_callback(vmm.quit)
            sandbox.vmm = vmm
            await vmm.connect(timeout=10)
            async with httpx.AsyncClient(timeout=self.start_timeout, trust_env=False) as client:
                r = await client.get(f"http://{slot.address}:{ENVD_PORT}/health")
            if r.status_code != 204:
                raise MicroVMError(f"envd answers /health with {r.status_code}")
        except Exception as e:
            log.warning("cannot adopt sandbox %s, removing it: %s", record.sandbox_id, e)
            await sandbox.stop()
            return None
        self._live[record.sandbox_id] = sandbox
        self._tokens[record.sandbox_id] = record.envd_token
        sandbox.push("its place in the driver", self.forget, record.sandbox_id)
        sandbox._watch()
        log.info("adopted VM %s at %s", record.sandbox_id, sandbox.slot.address)
        return sandbox

    async def reconcile_paused(self) -> dict[str, PausedMicroVM]:
        found, self._adopted_paused = self._adopted_paused, {}
        return found

    async def detach(self) -> None:
        """Let go of the running VMs (they go on, for the next node to adopt): no more
        watching them, no QMP connection (QEMU serves one client at a time). Pre-spawned
        VMMs hold no sandbox: they are stopped."""
        for sandbox in list(self._live.values()):
            sandbox._unwatch()
            if sandbox.vmm is not None:
                await sandbox.vmm.disconnect()
        self._live.clear()
        await self.vmms.close()

    async def shutdown(self) -> None:
        await self.vmms.close()


# --- helpers -------------------------------------------------------------------------


def detect_accel(kernel: GuestKernel) -> str:
    """Pick "kvm" when the CPU has vmx/svm and a canary guest boots under KVM, else "tcg"."""
    if not hardware_virtualization():
        log.warning(
            "microvm: no vmx/svm in /proc/cpuinfo, so no hardware virtualization (a /dev/kvm"
            " here may be PVM, which runs no stock kernel): guests run under QEMU's TCG"
            " software emulation, 14-80x slower"
        )
        return "tcg"
    argv = [
        "qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
        "-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config", "-no-reboot",
        "-display", "none", "-serial", "stdio", "-kernel", str(kernel.vmlinux),
        "-initrd", str(kernel.initramfs), "-append", f"{KERNEL_ARGS} hearth.canary",
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        ok = CANARY_MARKER.encode() in done.stdout
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        log.warning("microvm: the KVM canary guest did not boot: guests run under TCG")
        return "tcg"
    log.info("microvm: KVM acceleration (canary guest booted)")
    return "kvm"


async def init_envd(
    base_url: str,
    spec: SandboxSpec,
    timeout: float,
    held_token: str | None = None,
    *,
    ca: str | None = None,
) -> None:
    """POST envd's /init with the host's entropy too (a restored guest's pool is its
    snapshot's) and the CA the guest is to trust, if any."""
    body = {
        **init_body(spec),
        "entropy": base64.b64encode(os.urandom(ENTROPY_BYTES)).decode(),
    }
    if ca:
        body["caBundle"] = ca
    await envd_client.init(base_url, body, timeout=timeout, access_token=held_token)


async def _sync_guest(address: SandboxAddress, token: str | None) -> None:
    """Best effort: have the guest write its dirty pages back before QEMU goes."""
    message = json.dumps({"process": {"cmd": "/bin/sync", "args": []}}).encode()
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    headers = {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}
    if token:
        headers["X-Access-Token"] = token
    url = f"http://{address.host}:{address.port(ENVD_PORT)}/process.Process/Start"
    try:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as e:
        log.warning("could not sync the guest's disk before pausing: %s", e)


async def _set_guest_clock(address: SandboxAddress, token: str | None) -> None:
    """Best effort: set the guest's clock, which stood still while the guest was stopped."""
    url = f"http://{address.host}:{address.port(ENVD_PORT)}"
    try:
        await envd_client.init(url, {"timestamp": envd_client.now()}, access_token=token)
    except (httpx.HTTPError, envd_client.EnvdError) as e:
        log.warning("could not set the guest's clock after a snapshot: %s", e)


def _capture_paused(directory: Path, into: Path, memory: bool) -> None:
    """Copy a paused sandbox's disk, and with `memory` its memory state (blocking)."""
    saved.copy_disk(directory / OVERLAY, into / saved.DISK)
    if memory:
        done = subprocess.run(
            ["cp", "--sparse=always", str(directory / MEMORY_STATE), str(into / MEMORY_STATE)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise MicroVMError(f"copying the memory state failed: {done.stderr.strip()}")


async def _to_the_end(work: Awaitable[T]) -> T:
    """Await `work` to its end even if the caller is cancelled meanwhile (the cancellation
    goes on after it): what must happen after a stop, whatever stopped the caller."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


async def _take(stack: contextlib.AsyncExitStack, acquire) -> NetworkSlot:
    """Acquire a slot in a thread and register its release, even if cancelled meanwhile."""

    def taken(slot: NetworkSlot) -> None:
        stack.push_async_callback(asyncio.to_thread, slot.release)

    return await to_thread_to_the_end(acquire, taken=taken)


def _recorded_egress(record: VmRecord) -> Egress:
    return Egress.recorded(record.egress, allow_internet=record.allow_internet)


def _machine_dict(m: Machine) -> dict:
    d = asdict(m)
    return {**d, "kernel": str(m.kernel), "initramfs": str(m.initramfs)}


def _artifact_of(record: VmRecord) -> Artifact | None:
    return Artifact.from_json(record.artifact) if record.artifact else None


def _write_record(directory: Path, record: VmRecord) -> None:
    tmp = directory / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(asdict(record)))
    tmp.rename(directory / RECORD)


def _read_record(directory: Path) -> VmRecord | None:
    try:
        return VmRecord(**json.loads((directory / RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _is_our_qemu(pid: int, name: str) -> bool:
    if not name:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmdline and f"\0hearth-{name}\0".encode() in cmdline


def _kill_recorded_pid(pid: int, name: str) -> None:
    if _is_our_qemu(pid, name):
        vmm = Vmm(Path("/nonexistent"), name=name)
        with contextlib.suppress(ProcessLookupError):
            vmm.adopt(pid)
            vmm.kill()


def _kill_recorded(pid_file: Path, name: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        _kill_recorded_pid(int(pid_file.read_text().strip()), name)


async def _rmtree_if_there(directory: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, directory, True)


def _check_id(sandbox_id: str) -> None:
    if not (sandbox_id.isascii() and sandbox_id.isalnum() and sandbox_id.islower()):
        raise ValueError(f"invalid sandbox id {sandbox_id!r} (want [a-z0-9])")
