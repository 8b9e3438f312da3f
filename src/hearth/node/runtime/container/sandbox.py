"""Container sandboxes: envd as PID 1 of an OCI container in its own network slot.

A sandbox is assembled from what it holds, and each piece registers its release on the
sandbox's one `AsyncExitStack` the moment it is acquired:

1. a block of 65536 host ids (its user namespace's map),
2. a network slot (namespace, veth pair, address, rules),
3. its directory `data_dir/sandboxes/ID` (the mount points, config.json, envd's log,
   the record a restarted node adopts it from),
4. its disk: an ext4 image in that directory, on a loop device, mounted there, which
   holds the overlay's upper and work layers and bounds them by the template's disk
   size (`node/disk/overlay_disk.py`; the image and its mount are two releases),
5. its cgroups (created by the OCI runtime; removed here should the runtime not),
6. the container (the runtime's foreground process, envd and everything under it).

Kill, a failed create and shutdown all unwind that stack, in reverse, once; a release
that fails is logged and the rest still run. What only a running sandbox holds (2., 5.
and 6.) sits on a second stack inside the first, so that a filesystem-only pause can
release it alone and keep the id block, the directory and the disk; a resume acquires
it again. A host without loop devices gives sandboxes a plain upper directory instead,
unbounded (the node says so at start).

Pause: with memory, the OCI runtime's `pause` freezes the container's cgroup and
`resume` thaws it (then envd's /init sets the clock). The frozen container outlives a
restart of the node and is adopted as paused; if it is gone (the host rebooted), the
sandbox becomes a filesystem-only pause, which boots envd again over the same upper
layer on resume. The record on disk says which pause a sandbox is in.

envd from the node's zygote (HEARTH_ENVD_ZYGOTE, a sandbox's record says which): the
container's first process is a minimal init (`envd/pid1.py`) instead of envd, and the
node's envd zygote (`zygote.py`) forks envd into the container once it exists. envd is
that init's only child; the init ends the container when envd ends, and the node, which
watches envd, then stops the sandbox and releases what it holds. The rest (health,
/init, pause, kill, adoption after a restart) is the same either way.

Ids: each sandbox maps its uid/gid 0..65535 to its own host range
`2**30 + block * 65536`, so no two sandboxes share a host id (blocks are claimed
host-wide, `idblocks.py`: two node processes never hand out the same one) and nothing
in one is owned by an id of the host's. The template's layers and the envd bundle belong to the
host's ids and are shared read-only through id-mapped mounts (see `_launcher.py`),
which is what lets one cached template serve every sandbox without a chown'd copy;
files a sandbox writes land in its upper layer owned by its own range.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import json
import logging
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from hearth.config import settings
from hearth.node.disk import overlay_disk
from hearth.node.guest import envd_client
from hearth.node.guest.envd_bundle import (
    bundle_interpreter,
    envd_command,
    envd_environment,
    pid1_command,
)
from hearth.node.guest.envd_client import ENVD_PORT, ENVD_TARGET
from hearth.node.interface import SandboxAddress, SandboxSpec
from hearth.node.network import NetworkPool, NetworkSlot
from hearth.node.network.policy import Egress
from hearth.node.network.resolvers import sandbox_resolvers
from hearth.node.runtime._threads import threaded_release, to_thread_to_the_end
from hearth.node.runtime.container.bundle import (
    LXCFS_FILES,
    ContainerConfig,
    cpu_limit,
    host_view,
    oci_config,
)
from hearth.node.runtime.container.cpus import CpuPlacement
from hearth.node.runtime.container.idblocks import IdBlockError, IdBlocks
from hearth.node.runtime.container.oci import CGROUP2_HYBRID_MOUNT, OciRuntime
from hearth.node.runtime.container.zygote import (
    EnvdZygote,
    ZygoteError,
    spawn_request,
    zygote_born_envd,
)
from hearth.node.usage import ContainerProbe
from hearth.template.artifact import Artifact

if TYPE_CHECKING:
    from hearth.node.runtime.container.lxcfs import Lxcfs

log = logging.getLogger(__name__)


ENVD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAUNCHER = Path(__file__).with_name("_launcher.py")
ID_BASE = 2**30
ID_COUNT = 65536
ID_BLOCKS = 2**14  # keeps every mapped id below 2**31
DEFAULT_USER = "user"
RECORD = "record.json"
# In the runtime's data directory: the envd zygote's socket and its own output.
ZYGOTE_SOCKET = "envd-zygote.sock"
ZYGOTE_LOG = "envd-zygote.log"
# Names a directory, a container and a cgroup: nothing that could leave them.
SANDBOX_ID = re.compile(r"[a-z0-9]{1,64}")

T = TypeVar("T")


class ContainerError(RuntimeError):
    """A container sandbox could not be started; the message carries envd's output."""


# The system trust store of Debian-family templates (curl, OpenSSL, pip with it).
CA_BUNDLE = Path("etc/ssl/certs/ca-certificates.crt")


@dataclass
class SandboxRecord:
    """What a restarted node needs to adopt a sandbox, kept in its directory."""

    sandbox_id: str
    template_id: str
    slot_index: int
    id_block: int
    runtime: str
    monitor_pid: int | None = None
    created_at: float = 0.0
    metadata: dict[str, str] | None = None
    root: str = ""  # a single template root (records of earlier versions)
    # The template's layers the overlay stacks on, bottom first (a cold boot mounts
    # them again).
    layers: list[str] | None = None
    paused: str | None = None  # "memory" or "filesystem" while paused
    # A warm-pool member (see node/pool.py): never adopted until a create claims it;
    # then `claimed_as` is the API's id for it (its own id still names its directory,
    # container and cgroups).
    pooled: bool = False
    claimed_as: str | None = None
    build: bool = False  # a template build's sandbox: never adopted, always removed
    egress: dict | None = None  # its `Egress`, as JSON
    allow_internet: bool = True  # records of earlier versions; now in `egress`
    artifact: dict | None = None  # its template's (a cold resume starts it again)
    # The size of its disk (`overlay_disk`), which holds its upper and work layers.
    # None: they are plain directories beside the record (records of earlier versions,
    # hosts without loop devices).
    disk_mb: int | None = None
    # Its envd is forked in by the node's zygote under a minimal init (`envd_zygote`
    # of the runtime when it was created), and that envd's host pid.
    envd_zygote: bool = False
    envd_pid: int | None = None


def lower_layers(record: SandboxRecord) -> list[Path]:
    """The read-only layers under a sandbox's own, bottom first."""
    return [Path(p) for p in (record.layers or ([record.root] if record.root else []))]


def own_layer(directory: Path, record: SandboxRecord, name: str = overlay_disk.UPPER) -> Path:
    """The sandbox's writable layer (`upper`) or the overlay's work directory (`work`):
    on its disk, or beside its record where it has none."""
    return (directory / overlay_disk.MOUNTPOINT if record.disk_mb else directory) / name


class ContainerSandbox:
    """A container sandbox, running or paused. Stop it with `stop()` (idempotent)."""

    def __init__(
        self,
        record: SandboxRecord,
        directory: Path,
        stack: contextlib.AsyncExitStack,
        runtime: ContainerRuntime | None = None,
    ):
        self.record = record
        self.directory = directory
        self.slot: NetworkSlot | None = None
        self.container: _Container | None = None
        self.init_pid: int | None = None  # envd's pid on the host
        self.release_errors: list[BaseException] = []
        self._stack = stack
        # What only a running sandbox holds: its slot, cgroups and container.
        self._run = contextlib.AsyncExitStack()
        self._runtime = runtime
        self._stopped = asyncio.Event()
        self._stopping = False

    @property
    def sandbox_id(self) -> str:
        return self.record.sandbox_id

    @property
    def api_id(self) -> str:
        """The id the API knows it by: its own, or that of the create that claimed it."""
        return self.record.claimed_as or self.record.sandbox_id

    @property
    def address(self) -> SandboxAddress:
        assert self.slot is not None
        return SandboxAddress(self.slot.address)

    @property
    def paused(self) -> bool:
        return self.record.paused is not None

    @property
    def artifact(self) -> Artifact | None:
        """What the sandbox was created from (its layers, its start command)."""
        return Artifact.from_json(self.record.artifact) if self.record.artifact else None

    def usage_probe(self) -> ContainerProbe | None:
        """Where the host reads what the running sandbox uses (`node/usage.py`); None
        while it is paused or stopping."""
        if self._runtime is None or self._stopping or self.paused or self.container is None:
            return None
        disk = (
            self.directory / overlay_disk.MOUNTPOINT
            if self.record.disk_mb
            else own_layer(self.directory, self.record)
        )
        cgroup = f"{self._runtime.cgroup_parent}/{self.record.sandbox_id}"
        return ContainerProbe(cgroup=cgroup, disk=disk, init_pid=self.init_pid)

    async def set_egress(self, egress: Egress) -> None:
        """Replace what the running sandbox may reach, and keep it in its record."""
        assert self.slot is not None
        await asyncio.to_thread(self.slot.set_egress, egress)
        self.record.egress = egress.to_json()
        await to_thread_to_the_end(_write_record, self.directory, self.record)

    async def pause(self, memory: bool) -> PausedContainer:
        """Freeze the container (`memory`), or stop it and keep only its directory."""
        assert self._runtime is not None and not self._stopping
        await self._runtime.pause(self, memory)
        return PausedContainer(self)

    async def _release_running(self) -> None:
        await self._run.aclose()
        self._run = contextlib.AsyncExitStack()
        self.slot = self.container = None
        self.init_pid = None

    async def commit(self, dest: Path) -> None:
        """Stop a build sandbox and move its writable layer to `dest`, its files given
        the ids they had inside (a layer belongs to the host's 0..65535), then release
        the rest. The layer is the step's changes in overlay form (whiteouts too)."""
        from hearth.template.layers import move_tree, shift_ids

        assert self.record.build and not self._stopping
        try:
            await self._release_running()  # the container; its mounts go with it
            base = ID_BASE + self.record.id_block * ID_COUNT
            upper = own_layer(self.directory, self.record)
            if self.record.disk_mb:
                # Its disk goes with the sandbox: the layer is copied off it, not moved.
                await to_thread_to_the_end(_copy_layer, upper, dest)
                await to_thread_to_the_end(shift_ids, dest, base, ID_COUNT)
            else:
                await to_thread_to_the_end(shift_ids, upper, base, ID_COUNT)
                await to_thread_to_the_end(move_tree, upper, dest)
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Kill the sandbox and release everything it holds, once."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            await asyncio.shield(self._release_all())
        finally:
            self._stopped.set()

    async def _release_all(self) -> None:
        try:
            await self._release_running()
        finally:
            await self._stack.aclose()


class ContainerRuntime:
    """Starts, adopts and cleans up container sandboxes under `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        oci: OciRuntime,
        pool: NetworkPool,
        envd_bundle: Path,
        *,
        cgroup_parent: str = "hearth",
        pids_limit: int = 4096,
        start_timeout: float = 60.0,
        no_new_privileges: bool = False,
        dns_servers: list[str] | None = None,
        extra_ca: str | None = None,
        lxcfs: Lxcfs | None = None,
        envd_zygote: bool | None = None,
    ) -> None:
        """`extra_ca`: a CA certificate (PEM) every sandbox trusts besides its
        template's: the local CA, whose certificates the egress proxy presents where it
        applies header transforms over TLS, and the server's sandbox URLs. `lxcfs`: the
        node's daemon whose files sandboxes read of their own memory and CPUs.
        `envd_zygote`: new sandboxes get their envd from the node's zygote (None: as
        the settings say)."""
        # Why sandboxes get no disks of their own here (set by `setup()`), or None.
        self.no_disks: str | None = None
        self.data_dir = Path(data_dir)
        self.sandboxes_dir = self.data_dir / "sandboxes"
        self.oci = oci
        self.pool = pool
        self.envd_bundle = envd_bundle
        self.cgroup_parent = cgroup_parent
        self.pids_limit = pids_limit
        self.start_timeout = start_timeout
        self.no_new_privileges = no_new_privileges
        self.dns_servers = dns_servers
        self.extra_ca = extra_ca
        self.lxcfs = lxcfs
        self._blocks = IdBlocks(self.sandboxes_dir, ID_BLOCKS)
        self._cpus = CpuPlacement(cgroup_parent)
        self.envd_zygote = settings().envd_zygote if envd_zygote is None else envd_zygote
        self.zygote: EnvdZygote | None = None  # made at the first zygote-born envd
        self._ending: set[asyncio.Task[None]] = set()  # stops of sandboxes whose envd died
        self._watches: dict[str, Callable[[], None]] = {}  # sandbox id -> its unwatch

    def setup(self) -> None:
        for d in (self.data_dir, self.sandboxes_dir, self.oci.state_root):
            d.mkdir(parents=True, exist_ok=True)
        # The runtime resolves each sandbox's root path as the sandbox's root, an id the
        # host does not know: every directory above it must let others pass.
        for parent in self.data_dir.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise ContainerError(
                    f"{parent} is not searchable by other users (mode "
                    f"{parent.stat().st_mode & 0o777:o}); the container runtime cannot "
                    f"reach sandboxes under {self.data_dir}: choose a data directory "
                    f"outside it (e.g. /var/lib/hearth) or chmod o+x {parent}"
                )
        # The sandboxes' roots are reached through here by their own (unmapped) ids.
        for d in (self.data_dir, self.sandboxes_dir):
            d.chmod(0o711)
        self.oci.state_root.chmod(0o700)
        self.no_disks = overlay_disk.unavailable()
        if self.no_disks:
            log.warning(
                "sandboxes' disks are not bounded on this host (%s): each writes into %s"
                " until the host's disk is full",
                self.no_disks,
                self.sandboxes_dir,
            )

    # --- create ----------------------------------------------------------------------

    async def start(
        self, spec: SandboxSpec, layers: list[Path], *, pooled: bool = False, build: bool = False
    ) -> ContainerSandbox:
        """Start a sandbox of `spec` over the template's `layers` (bottom first); returns
        once envd answers /health and has taken /init. A `pooled` one waits for
        `claim()`. A `build` sandbox's writable layer becomes a template layer
        (`commit()`)."""
        if not SANDBOX_ID.fullmatch(spec.sandbox_id):
            raise ValueError(f"invalid sandbox id {spec.sandbox_id!r} (want [a-z0-9]{{1,64}})")
        started = time.monotonic()
        stack = contextlib.AsyncExitStack()
        record = SandboxRecord(
            sandbox_id=spec.sandbox_id,
            template_id=spec.template_id,
            slot_index=-1,
            egress=spec.egress.to_json(),
            id_block=-1,
            runtime=self.oci.name,
            created_at=time.time(),
            metadata=dict(spec.metadata),
            layers=[str(p) for p in layers],
            pooled=pooled,
            build=build,
            artifact=spec.artifact.to_json() if spec.artifact else None,
            disk_mb=None if self.no_disks else spec.disk_mb or overlay_disk.DEFAULT_SIZE_MB,
            envd_zygote=self.envd_zygote,
        )
        directory = self.sandboxes_dir / spec.sandbox_id
        sandbox = ContainerSandbox(record, directory, stack, self)
        release = _Releaser(sandbox)
        running = _Releaser(sandbox, sandbox._run)
        try:
            record.id_block = self._blocks.claim(spec.sandbox_id)
            release.push("its id block", self._blocks.free, record.id_block)

            slot = await running.take(
                "its network slot",
                lambda: self.pool.acquire(spec.egress),
                lambda slot: slot.release,
            )
            sandbox.slot = slot
            record.slot_index = slot.index

            # Made here, before its release is pushed: a directory that already exists
            # is another sandbox's, never to be removed by this one's unwinding.
            directory.mkdir(mode=0o711)
            release.push("its directory", shutil.rmtree, directory)
            if record.disk_mb:
                await release.take(
                    "its disk image",
                    functools.partial(overlay_disk.make_image, _image(directory), record.disk_mb),
                    lambda _: _image(directory).unlink,
                )
                await self._mount_disk(sandbox, release)
            await to_thread_to_the_end(self._fill_directory, directory, spec, record, slot, layers)
            await self._boot(sandbox, spec, running)
            log.info(
                "sandbox %s up at %s in %.0f ms",
                spec.sandbox_id,
                slot.address,
                (time.monotonic() - started) * 1000,
            )
            return sandbox
        except BaseException:
            await sandbox.stop()
            raise

    async def _mount_disk(self, sandbox: ContainerSandbox, release: _Releaser) -> None:
        """Mount the sandbox's disk (as it is if it is mounted: a restarted node's) and
        push its release: unmounted, its loop device gone."""
        image, mountpoint = _image(sandbox.directory), sandbox.directory / overlay_disk.MOUNTPOINT
        await release.take(
            "its disk",
            functools.partial(overlay_disk.mount, image, mountpoint),
            lambda _: functools.partial(overlay_disk.release, image, mountpoint),
        )

    async def _boot(self, sandbox: ContainerSandbox, spec: SandboxSpec, running: _Releaser) -> None:
        """Launch the container of a sandbox whose directory and slot are ready; returns
        once envd answers and has taken /init."""
        record, directory, slot = sandbox.record, sandbox.directory, sandbox.slot
        assert slot is not None
        running.push("its cgroups", self._remove_cgroups, record.sandbox_id)
        container = await running.take(
            "its container",
            lambda: self._launch(directory, record, lower_layers(record)),
            lambda container: container.stop,
        )
        sandbox.container = container
        record.monitor_pid = container.monitor_pid
        await to_thread_to_the_end(_write_record, directory, record)
        if record.envd_zygote:
            await self._spawn_envd(sandbox, container)
        await self._wait_healthy(slot.address, container, directory)
        sandbox.init_pid = container.init_pid
        await init_envd(f"http://{slot.address}:{ENVD_PORT}", spec)

    async def claim(self, sandbox: ContainerSandbox, spec: SandboxSpec) -> None:
        """Hand a pooled sandbox to the create of `spec`: envd takes the create's /init
        (its access token, env vars, clock), then the record names it by the API's id,
        so that a restarted node adopts it as that sandbox. Raises if it is no longer
        running or envd does not take /init (the caller then stops it)."""
        record, container, slot = sandbox.record, sandbox.container, sandbox.slot
        if not record.pooled or record.claimed_as is not None:
            raise ContainerError(f"sandbox {record.sandbox_id} is not a waiting pool member")
        if container is None or slot is None or container.poll() is not None:
            raise ContainerError(f"pooled sandbox {record.sandbox_id} is not running")
        # /init before the record: a node that stops in between removes the sandbox at
        # its next start rather than adopt one that never took the create's token.
        await asyncio.to_thread(slot.set_egress, spec.egress)
        record.egress = spec.egress.to_json()
        await init_envd(f"http://{slot.address}:{ENVD_PORT}", spec)
        record.claimed_as = spec.sandbox_id
        record.template_id = spec.template_id
        record.metadata = dict(spec.metadata)
        await to_thread_to_the_end(_write_record, sandbox.directory, record)

    # --- pause and resume ------------------------------------------------------------

    async def pause(self, sandbox: ContainerSandbox, memory: bool) -> None:
        record = sandbox.record
        if record.paused is not None:
            raise ContainerError(f"sandbox {record.sandbox_id} is already paused")
        if memory:
            container = sandbox.container
            assert container is not None
            await asyncio.to_thread(self.oci.pause, record.sandbox_id)
            container.frozen = True
            record.paused = "memory"
        else:
            await sandbox._release_running()
            record.paused = "filesystem"
        await asyncio.to_thread(_write_record, sandbox.directory, record)
        log.info("sandbox %s paused (%s)", record.sandbox_id, record.paused)

    async def drop_memory(self, sandbox: ContainerSandbox) -> None:
        """Turn a memory pause into a filesystem-only one (to release what it holds)."""
        if sandbox.record.paused != "memory":
            return
        await sandbox._release_running()
        sandbox.record.paused = "filesystem"
        await asyncio.to_thread(_write_record, sandbox.directory, sandbox.record)

    async def resume(self, sandbox: ContainerSandbox, spec: SandboxSpec) -> ContainerSandbox:
        """Thaw a memory pause, or boot envd again over a filesystem-only pause's files;
        returns once envd answers and has taken /init (its clock set, same token)."""
        record = sandbox.record
        # The policy may have changed while it was paused (`PUT .../network`).
        record.egress = spec.egress.to_json()
        if record.paused == "memory":
            container, slot = sandbox.container, sandbox.slot
            assert container is not None and slot is not None
            await asyncio.to_thread(slot.set_egress, spec.egress)
            await asyncio.to_thread(self.oci.resume, record.sandbox_id)
            container.frozen = False
            await init_envd(f"http://{slot.address}:{ENVD_PORT}", spec)
        elif record.paused == "filesystem":
            if not lower_layers(record):
                raise ContainerError(f"sandbox {record.sandbox_id}: no template layers recorded")
            running = _Releaser(sandbox, sandbox._run)
            try:
                slot = await running.take(
                    "its network slot",
                    lambda: self.pool.acquire(_recorded_egress(record)),
                    lambda slot: slot.release,
                )
                sandbox.slot = slot
                record.slot_index = slot.index
                await to_thread_to_the_end(self._rewire, sandbox.directory, record, slot)
                await self._boot(sandbox, spec, running)
            except BaseException:
                await sandbox._release_running()
                raise
        else:
            raise ContainerError(f"sandbox {record.sandbox_id} is not paused")
        record.paused = None
        await asyncio.to_thread(_write_record, sandbox.directory, record)
        log.info("sandbox %s resumed", record.sandbox_id)
        return sandbox

    # --- snapshot -----------------------------------------------------------------------

    def capture(self, sandbox: ContainerSandbox, dest: Path) -> None:
        """Copy the sandbox's files as they are now (its upper layer) into the empty
        directory `dest`, in layer form: owned by the ids they have inside, without the
        files the runtime writes. A running container is frozen for the copy only, so
        that it is one moment's; its processes then go on. Blocking: run in a thread."""
        from hearth.template.layers import shift_ids, strip_sandbox_files

        record = sandbox.record
        freeze = record.paused is None
        if freeze:
            self.oci.pause(record.sandbox_id)
        try:
            _copy_layer(own_layer(sandbox.directory, record), dest)
        finally:
            if freeze:
                self.oci.resume(record.sandbox_id)
        shift_ids(dest, ID_BASE + record.id_block * ID_COUNT, ID_COUNT)
        strip_sandbox_files(dest, lower_layers(record))

    def _rewire(self, directory: Path, record: SandboxRecord, slot: NetworkSlot) -> None:
        """Point a stopped sandbox's config and /etc/hosts at its new network slot."""
        path = directory / "config.json"
        config = json.loads(path.read_text())
        for namespace in config["linux"]["namespaces"]:
            if namespace["type"] == "network":
                namespace["path"] = str(slot.netns_path)
        path.write_text(json.dumps(config, indent=1))
        hosts = own_layer(directory, record) / "etc" / "hosts"
        hostname = _template_hostname(lower_layers(record))
        with contextlib.suppress(OSError):
            lines = hosts.read_text().splitlines()
            for i, line in enumerate(lines):
                if line.split()[1:] == [hostname]:
                    lines[i] = f"{slot.address}\t{hostname}"
            hosts.write_text("".join(f"{line}\n" for line in lines))

    def _fill_directory(
        self,
        directory: Path,
        spec: SandboxSpec,
        record: SandboxRecord,
        slot: NetworkSlot,
        layers: list[Path],
    ) -> None:
        base = ID_BASE + record.id_block * ID_COUNT
        for name in ("lower", "rootfs"):
            (directory / name).mkdir(mode=0o700)
        own_layer(directory, record, overlay_disk.WORK).mkdir(mode=0o700)
        upper = own_layer(directory, record)
        upper.mkdir(mode=0o755)
        # The root of the overlay takes the upper layer's owner: the sandbox's root.
        os.chown(upper, base, base)
        etc = upper / "etc"
        etc.mkdir(mode=0o755)
        os.chown(etc, base, base)
        hostname = _template_hostname(layers)
        files = {
            "hostname": f"{hostname}\n",
            "hosts": (
                "127.0.0.1\tlocalhost\n"
                "::1\tlocalhost ip6-localhost ip6-loopback\n"
                f"{slot.address}\t{hostname}\n"
            ),
            "resolv.conf": "".join(f"nameserver {ns}\n" for ns in self._dns()),
        }
        if self.extra_ca:
            bundle = _template_file(layers, CA_BUNDLE)
            if bundle is not None:
                certs = etc / CA_BUNDLE.parent.relative_to("etc")
                for d in (certs.parent, certs):
                    d.mkdir(mode=0o755)
                    os.chown(d, base, base)
                files[str(CA_BUNDLE.relative_to("etc"))] = (
                    bundle.rstrip("\n") + "\n" + self.extra_ca.strip() + "\n"
                )
        for name, text in files.items():
            path = etc / name
            path.write_text(text)
            path.chmod(0o644)
            os.chown(path, base, base)
        config = ContainerConfig(
            rootfs=directory / "rootfs",
            argv=(
                pid1_command(ENVD_TARGET)
                if record.envd_zygote
                else envd_command(ENVD_TARGET, "0.0.0.0", ENVD_PORT)
            ),
            env={**envd_environment(ENVD_TARGET), "PATH": ENVD_PATH},
            hostname=hostname,
            id_base=base,
            id_count=ID_COUNT,
            netns_path=slot.netns_path,
            cgroups_path=f"/{self.cgroup_parent}/{record.sandbox_id}",
            cpu_count=spec.cpu_count,
            memory_mb=spec.memory_mb,
            pids_limit=self.pids_limit,
            no_new_privileges=self.no_new_privileges,
            # Raising a hard limit needs privilege the runtime no longer has when it
            # applies it (inside the user namespace): at most the node's own.
            open_files=min(1 << 20, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
        )
        (directory / "config.json").write_text(json.dumps(oci_config(config), indent=1))
        _write_record(directory, record)

    def _launch(self, directory: Path, record: SandboxRecord, layers: list[Path]) -> _Container:
        self._take_host_view(directory, record.sandbox_id)
        launch = {
            "directory": str(directory),
            "layers": [str(p) for p in layers],
            "envd_bundle": str(self.envd_bundle),
            "envd_target": ENVD_TARGET,
            "lower": str(directory / "lower"),
            "upper": str(own_layer(directory, record)),
            "work": str(own_layer(directory, record, overlay_disk.WORK)),
            "rootfs": str(directory / "rootfs"),
            "id_base": ID_BASE + record.id_block * ID_COUNT,
            "id_count": ID_COUNT,
            "hide_cgroup2": self.oci.hide_cgroup2,
            "cgroup2_mount": CGROUP2_HYBRID_MOUNT,
            "lxcfs": str(self.lxcfs.mount) if self.lxcfs is not None else None,
            "argv": self.oci.command(
                "run",
                "--bundle",
                str(directory),
                "--pid-file",
                str(directory / "pid"),
                record.sandbox_id,
            ),
        }
        with open(directory / "envd.log", "ab") as out:
            monitor = subprocess.Popen(
                [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(launch)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                # The container must outlive a node that stops or restarts (to be
                # adopted), and a Ctrl-C in the node's terminal must not reach it.
                start_new_session=True,
            )
        return _Container(self.oci, record.sandbox_id, directory, monitor=monitor)

    def _take_host_view(self, directory: Path, sandbox_id: str) -> None:
        """Write into config.json what this launch takes from the host as it is now:
        its CPUs (cpus.py) and lxcfs's files while the daemon is up (bundle.host_view)."""
        path = directory / "config.json"
        config = json.loads(path.read_text())
        cpus = self._cpus.place(sandbox_id, cpu_limit(config))
        view = self.lxcfs.view if self.lxcfs is not None else None
        path.write_text(json.dumps(host_view(config, view, cpus), indent=1))

    def rebind_lxcfs(self) -> None:
        """Bind the files of the lxcfs daemon now up into every running container, in
        place of those of one that exited (dead: their reads fail), or take those away
        while none is up, so that the sandbox reads the kernel's. Blocking."""
        view = self.lxcfs.view if self.lxcfs is not None else None
        inits = self.running_inits()
        if not inits:
            return
        spec = {
            "inits": inits,
            "source": str(view.mount) if view else None,
            "files": list(view.files if view else LXCFS_FILES),
        }
        done = subprocess.run(
            [sys.executable, "-I", "-S", str(LAUNCHER), "--rebind", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            log.warning("redoing the lxcfs binds of sandboxes failed: %s", done.stderr.strip())
        else:
            what = "lxcfs's files" if view else "the host's /proc (no lxcfs)"
            log.info("%d running sandboxes see %s", len(inits), what)

    def running_inits(self) -> list[int]:
        """The host pids of the inits of this runtime's containers, frozen ones too."""
        names = os.listdir(self.sandboxes_dir) if self.sandboxes_dir.is_dir() else []
        return [pid for pid in map(self._running_init, names) if pid is not None]

    def _running_init(self, name: str) -> int | None:
        """The host pid of sandbox `name`'s container init if it runs (its pid file may
        be a stopped container's: the process must be in the sandbox's cgroup)."""
        try:
            pid = int((self.sandboxes_dir / name / "pid").read_text())
            cgroups = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except (OSError, ValueError):
            return None
        own = f":/{self.cgroup_parent}/{name}"
        return pid if any(line.endswith(own) for line in cgroups) else None

    async def _wait_healthy(self, address: str, container: _Container, directory: Path) -> None:
        def dead() -> str | None:
            code = container.poll()
            return None if code is None else f"the sandbox's container exited ({code})"

        try:
            await envd_client.wait_healthy(
                f"http://{address}:{ENVD_PORT}", timeout=self.start_timeout, dead=dead
            )
        except envd_client.EnvdError as e:
            raise ContainerError(f"{e}{_log_tail(directory)}") from None

    def _dns(self) -> list[str]:
        return sandbox_resolvers(self.dns_servers)

    # --- envd from the node's zygote (records with `envd_zygote`) --------------------

    async def let_go(self) -> None:
        """Stop watching envds and stop the zygote (a node that detaches or shuts
        down): the sandboxes and their envds go on, for a next node to adopt."""
        for unwatch in list(self._watches.values()):
            unwatch()
        zygote, self.zygote = self.zygote, None
        if zygote is not None:
            await to_thread_to_the_end(zygote.close)

    async def _spawn_envd(self, sandbox: ContainerSandbox, container: _Container) -> None:
        """Have the zygote fork envd into the container just launched, then watch it."""
        record, directory = sandbox.record, sandbox.directory
        if self.zygote is None:
            self.zygote = EnvdZygote(
                bundle_interpreter(str(self.envd_bundle)),
                self.envd_bundle,
                ENVD_TARGET,
                self.data_dir / ZYGOTE_SOCKET,
                self.data_dir / ZYGOTE_LOG,
            )
        zygote = self.zygote

        def spawn() -> int:
            init_pid = self._wait_for_init(container, directory)
            config = json.loads((directory / "config.json").read_text())
            cgroups = self.cgroup_dirs(record.sandbox_id)
            request = spawn_request(config, init_pid, cgroups, ENVD_PORT)
            with open(directory / "envd.log", "ab") as out:
                return zygote.spawn(request, out.fileno())

        try:
            record.envd_pid = await to_thread_to_the_end(spawn)
        except ZygoteError as e:
            raise ContainerError(f"{e}{_log_tail(directory)}") from None
        await to_thread_to_the_end(_write_record, directory, record)
        self._watch_envd(sandbox, record.envd_pid)

    def _wait_for_init(self, container: _Container, directory: Path) -> int:
        """The host pid of the container's init once the runtime has made it. Blocking."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = container.poll()
            if code is not None:
                raise ContainerError(
                    f"the sandbox's container exited ({code}){_log_tail(directory)}"
                )
            if container.init_pid is not None:
                return container.init_pid
            if time.monotonic() > deadline:
                raise ContainerError(
                    f"the container's init did not start in {self.start_timeout} s"
                )
            time.sleep(0.002)

    def _adopt_envd(self, sandbox: ContainerSandbox, container: _Container) -> None:
        """Watch the zygote-born envd of a sandbox a previous node process left."""
        pid = sandbox.record.envd_pid
        assert container.init_pid is not None
        if pid is None or not zygote_born_envd(pid, container.init_pid):
            raise ContainerError("its envd is gone")
        self._watch_envd(sandbox, pid)

    def _watch_envd(self, sandbox: ContainerSandbox, pid: int) -> None:
        """Stop the sandbox when its envd ends (its init has then ended the container):
        a sandbox is never left running without envd. The watch goes with what the
        running sandbox holds, first of all (before its container is killed)."""
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise ContainerError(f"its envd (pid {pid}) ended at its start") from None
        watching = True

        def unwatch() -> None:
            nonlocal watching
            if watching:
                watching = False
                self._watches.pop(sandbox.sandbox_id, None)
                loop.remove_reader(pidfd)
                os.close(pidfd)

        def ended() -> None:
            unwatch()
            if sandbox._stopping:
                return
            log.warning(
                "sandbox %s: its envd (pid %d) ended; stopping the sandbox", sandbox.sandbox_id, pid
            )
            task = loop.create_task(sandbox.stop())
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

        loop.add_reader(pidfd, ended)
        self._watches[sandbox.sandbox_id] = unwatch
        sandbox._run.callback(unwatch)

    # --- adopt and clean up ----------------------------------------------------------

    async def reconcile(self) -> tuple[list[ContainerSandbox], list[str]]:
        """Adopt the sandboxes a previous node process left running or paused (their
        `paused` says which); remove everything else of theirs (containers, cgroups,
        directories, network slots). Returns the adopted sandboxes and a description of
        what was removed."""
        adopted: list[ContainerSandbox] = []
        removed: list[str] = []
        entries = sorted(os.listdir(self.sandboxes_dir)) if self.sandboxes_dir.is_dir() else []
        for name in entries:
            directory = self.sandboxes_dir / name
            sandbox = await self._adopt(directory)
            if sandbox is not None:
                adopted.append(sandbox)
                continue
            await asyncio.to_thread(self._discard, name, directory)
            removed.append(f"sandbox {name}")
        keep = {s.sandbox_id for s in adopted}
        # A sandbox's directory is made before its container and cgroups and removed
        # after them, so the directories and the runtime's state name all there is.
        for name in await asyncio.to_thread(self.oci.containers):
            if name not in keep and name not in entries:
                await asyncio.to_thread(self._discard, name, None)
                removed.append(f"container {name}")
        slots = {s.slot.index for s in adopted if s.slot is not None}
        removed += [f"network slot {n}" for n in await asyncio.to_thread(self.pool.sweep, slots)]
        return adopted, removed

    async def _adopt(self, directory: Path) -> ContainerSandbox | None:
        try:
            data = json.loads((directory / RECORD).read_text())
            record = SandboxRecord(**data)
        except (OSError, ValueError, TypeError):
            return None
        if record.runtime != self.oci.name or record.slot_index < 0 or record.id_block < 0:
            return None
        if record.build or (record.pooled and record.claimed_as is None):
            # A build's sandbox (the build ended with the node), or a pool member
            # nobody claimed: the new node starts its own.
            return None
        state = await asyncio.to_thread(self.oci.state, record.sandbox_id)
        status = state.get("status") if state and state.get("pid") else None
        if record.paused is not None and status not in ("running", "paused"):
            # Its container is gone (a reboot) or was never booted again: the files are
            # all that is left, which a filesystem-only resume boots from.
            return await self._adopt_stopped(directory, record)
        if status not in ("running", "paused") or (status == "paused" and not record.paused):
            return None
        assert state is not None
        stack = contextlib.AsyncExitStack()
        sandbox = ContainerSandbox(record, directory, stack, self)
        release = _Releaser(sandbox)
        running = _Releaser(sandbox, sandbox._run)
        try:
            self._blocks.claim(record.sandbox_id, record.id_block)
            release.push("its id block", self._blocks.free, record.id_block)
            release.push("its directory", shutil.rmtree, directory)
            await self._adopt_disk(sandbox, release)
            slot = await running.take(
                "its network slot",
                lambda: self.pool.adopt(record.slot_index, _recorded_egress(record)),
                lambda slot: slot.release,
            )
            sandbox.slot = slot
            running.push("its cgroups", self._remove_cgroups, record.sandbox_id)
            container = _Container.adopt(
                self.oci, record.sandbox_id, directory, int(state["pid"]), record.monitor_pid
            )
            container.frozen = status == "paused"
            running.push("its container", container.stop)
            sandbox.container = container
            sandbox.init_pid = container.init_pid
            if record.paused and status == "running":
                # The node stopped mid-resume, before the record said so: freeze it
                # again, as the control plane still holds it paused.
                await asyncio.to_thread(self.oci.pause, record.sandbox_id)
                container.frozen = True
            if not container.frozen:
                async with envd_client.client() as client:
                    r = await client.get(f"http://{slot.address}:{ENVD_PORT}/health")
                    if r.status_code != 204:
                        raise ContainerError(f"envd answers /health with {r.status_code}")
            if record.envd_zygote:
                self._adopt_envd(sandbox, container)
        except Exception as e:
            log.warning("cannot adopt sandbox %s, removing it: %s", record.sandbox_id, e)
            await sandbox.stop()
            return None
        if record.paused:
            record.paused = "memory"
            await asyncio.to_thread(_write_record, directory, record)
        log.info(
            "adopted %s sandbox %s at %s",
            "paused" if record.paused else "running",
            record.sandbox_id,
            slot.address,
        )
        return sandbox

    async def _adopt_stopped(
        self, directory: Path, record: SandboxRecord
    ) -> ContainerSandbox | None:
        """Adopt a paused sandbox whose container is gone as a filesystem-only pause."""
        await asyncio.to_thread(self._discard, record.sandbox_id, None)
        sandbox = ContainerSandbox(record, directory, contextlib.AsyncExitStack(), self)
        release = _Releaser(sandbox)
        try:
            self._blocks.claim(record.sandbox_id, record.id_block)
        except IdBlockError as e:
            log.warning("cannot adopt paused sandbox %s, removing it: %s", record.sandbox_id, e)
            return None
        release.push("its id block", self._blocks.free, record.id_block)
        release.push("its directory", shutil.rmtree, directory)
        try:
            await self._adopt_disk(sandbox, release)  # after a reboot: attached again
        except Exception as e:
            log.warning("cannot adopt paused sandbox %s, removing it: %s", record.sandbox_id, e)
            await sandbox.stop()
            return None
        if record.paused != "filesystem":
            log.warning(
                "sandbox %s: its frozen container is gone; it resumes from its files only",
                record.sandbox_id,
            )
            record.paused = "filesystem"
            await asyncio.to_thread(_write_record, directory, record)
        log.info("adopted sandbox %s, paused without memory", record.sandbox_id)
        return sandbox

    async def _adopt_disk(self, sandbox: ContainerSandbox, release: _Releaser) -> None:
        """Take over the disk of a sandbox a previous node process left, if it has one."""
        if sandbox.record.disk_mb:
            image = _image(sandbox.directory)
            if not image.is_file():
                raise ContainerError(f"its disk image {image} is gone")
            release.push("its disk image", image.unlink)
            await self._mount_disk(sandbox, release)

    def _discard(self, name: str, directory: Path | None) -> None:
        """Remove a sandbox that cannot be adopted: container, cgroups, directory. Its
        network slot goes in the pool's sweep."""
        steps: list[Callable[[], object]] = [
            lambda: self._thaw(name),
            lambda: self.oci.delete(name),
            lambda: self._remove_cgroups(name),
        ]
        if directory is not None:
            block = _recorded_block(directory)
            steps.append(
                lambda: overlay_disk.release(_image(directory), directory / overlay_disk.MOUNTPOINT)
            )
            steps.append(lambda: shutil.rmtree(directory))
            if block is not None:
                steps.append(lambda: self._blocks.free(block))
        for step in steps:
            try:
                step()
            except FileNotFoundError:
                pass
            except Exception:
                log.exception("removing leftovers of sandbox %s", name)

    def _thaw(self, name: str) -> None:
        """Thaw a frozen leftover container, whose processes could not die otherwise."""
        state = self.oci.state(name)
        if state and state.get("status") == "paused":
            self.oci.resume(name)

    # --- cgroups ---------------------------------------------------------------------

    def cgroup_dirs(self, name: str) -> list[str]:
        """The cgroup directories of sandbox `name` that exist (one per v1 hierarchy)."""
        return glob.glob(f"/sys/fs/cgroup/*/{self.cgroup_parent}/{name}") + glob.glob(
            f"/sys/fs/cgroup/{self.cgroup_parent}/{name}"
        )

    def _remove_cgroups(self, name: str) -> None:
        """rmdir the sandbox's cgroups (the runtime normally has; this is the backstop)."""
        self._cpus.release(name)
        failed = []
        for path in self.cgroup_dirs(name):
            for attempt in range(50):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if attempt == 49:
                        failed.append(path)
                    time.sleep(0.02)  # the last task is still leaving
        if failed:
            raise ContainerError(f"cgroups still busy: {failed}")

    def remove_cgroup_parents(self) -> None:
        """rmdir the cgroup parent in every hierarchy if no sandbox is left in it."""
        for parent in glob.glob(f"/sys/fs/cgroup/*/{self.cgroup_parent}") + glob.glob(
            f"/sys/fs/cgroup/{self.cgroup_parent}"
        ):
            with contextlib.suppress(OSError):
                os.rmdir(parent)


class PausedContainer:
    """A paused container sandbox: `memory` says whether its processes were kept."""

    def __init__(self, sandbox: ContainerSandbox) -> None:
        self.sandbox = sandbox

    @property
    def sandbox_id(self) -> str:
        return self.sandbox.sandbox_id

    @property
    def memory(self) -> bool:
        return self.sandbox.record.paused == "memory"

    @property
    def artifact(self) -> Artifact | None:
        return self.sandbox.artifact

    async def resume(self, spec: SandboxSpec) -> ContainerSandbox:
        assert self.sandbox._runtime is not None
        return await self.sandbox._runtime.resume(self.sandbox, spec)

    async def drop_memory(self) -> None:
        """Stop the frozen container and keep only its files (to free the host)."""
        assert self.sandbox._runtime is not None
        await self.sandbox._runtime.drop_memory(self.sandbox)

    async def discard(self) -> None:
        await self.sandbox.stop()


class _Container:
    """The OCI runtime's foreground process for one container, and the container's init
    (envd). `stop()` kills envd (PID 1: the kernel then kills the whole pid namespace),
    waits for the runtime process to reap it and remove the container's state and
    cgroups, and deletes the container through the runtime should anything remain."""

    def __init__(
        self,
        oci: OciRuntime,
        container_id: str,
        directory: Path,
        *,
        monitor: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.oci = oci
        self.container_id = container_id
        self.directory = directory
        self._monitor = monitor
        self._monitor_pidfd: int | None = None
        self._init_pidfd: int | None = None
        self.init_pid: int | None = None
        self.frozen = False  # paused by the OCI runtime: a kill lands once thawed

    @classmethod
    def adopt(
        cls,
        oci: OciRuntime,
        container_id: str,
        directory: Path,
        init_pid: int,
        monitor_pid: int | None,
    ) -> _Container:
        c = cls(oci, container_id, directory)
        c.init_pid = init_pid
        c._init_pidfd = os.pidfd_open(init_pid)
        if monitor_pid and _cmdline_mentions(monitor_pid, container_id):
            with contextlib.suppress(ProcessLookupError):
                c._monitor_pidfd = os.pidfd_open(monitor_pid)
        return c

    @property
    def monitor_pid(self) -> int | None:
        return self._monitor.pid if self._monitor else None

    def poll(self) -> int | None:
        """The runtime process's exit status once it has ended, else None. Until then,
        also looks for the pid file the runtime writes once the container exists, and
        takes hold of the container's init (a pidfd) as soon as it appears."""
        if self._monitor is not None:
            code = self._monitor.poll()
            if code is not None:
                return code
        if self._init_pidfd is None:
            self._open_init()
        return None

    def _open_init(self) -> None:
        try:
            pid = int((self.directory / "pid").read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            self._init_pidfd = os.pidfd_open(pid)
            self.init_pid = pid

    def stop(self) -> None:
        errors = []
        if self._init_pidfd is None:
            self._open_init()
        if self._init_pidfd is not None:
            if self.frozen:
                # Frozen tasks die only once thawed: kill first, so nothing runs on.
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
                try:
                    self.oci.resume(self.container_id)
                    self.frozen = False
                except Exception as e:
                    errors.append(e)
            try:
                _kill_and_wait(self._init_pidfd, 10)
            except Exception as e:
                errors.append(e)
            finally:
                os.close(self._init_pidfd)
                self._init_pidfd = None
        elif self._monitor is not None and self._monitor.poll() is None:
            # No container yet: stop the runtime where it is; delete cleans up after it.
            self._monitor.kill()
        if self._monitor is not None:
            try:
                self._monitor.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._monitor.kill()
                self._monitor.wait()
        elif self._monitor_pidfd is not None:
            with contextlib.suppress(Exception):
                select.select([self._monitor_pidfd], [], [], 10)
            os.close(self._monitor_pidfd)
            self._monitor_pidfd = None
        try:
            self.oci.delete(self.container_id)
        except Exception as e:
            errors.append(e)
        if errors:
            raise errors[0]


class _Releaser:
    """Pushes releases onto a sandbox's stack (or `stack`, one of its own): each runs in
    a thread, and a failure is logged and kept, never stops the others."""

    def __init__(
        self, sandbox: ContainerSandbox, stack: contextlib.AsyncExitStack | None = None
    ) -> None:
        self._sandbox = sandbox
        self._stack = stack if stack is not None else sandbox._stack

    def push(self, what: str, release: Callable[..., object], *args: object) -> None:
        sandbox = self._sandbox
        self._stack.push_async_callback(
            threaded_release(sandbox.sandbox_id, what, sandbox.release_errors, release, *args)
        )

    async def take(
        self,
        what: str,
        acquire: Callable[[], T],
        release_of: Callable[[T], Callable[[], object]],
    ) -> T:
        """Run the blocking `acquire()` in a thread and push the release of what it
        returns. Cancelled meanwhile, it still waits for the thread and pushes the
        release before re-raising: a thread is never left to acquire for no one."""
        return await to_thread_to_the_end(
            acquire, taken=lambda result: self.push(what, release_of(result))
        )


def _kill_and_wait(pidfd: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    ready, _, _ = select.select([pidfd], [], [], timeout)
    if not ready:
        raise ContainerError(f"the container's init did not exit within {timeout:.0f} s")


def _cmdline_mentions(pid: int, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _write_record(directory: Path, record: SandboxRecord) -> None:
    tmp = directory / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(asdict(record)))
    tmp.rename(directory / RECORD)


def _image(directory: Path) -> Path:
    """The image file of the disk of the sandbox in `directory`."""
    return directory / overlay_disk.IMAGE


def _copy_layer(upper: Path, dest: Path) -> None:
    """Copy a sandbox's writable layer, as it lies (owners, whiteouts, xattrs), to
    `dest` (made if missing)."""
    dest.mkdir(mode=0o755, exist_ok=True)
    subprocess.run(
        ["cp", "-a", "--reflink=auto", f"{upper}/.", str(dest)], check=True, capture_output=True
    )


def _recorded_block(directory: Path) -> int | None:
    """The id block a sandbox's record names, if it can be read."""
    try:
        block = json.loads((directory / RECORD).read_text()).get("id_block")
    except (OSError, ValueError, AttributeError):
        return None
    return block if isinstance(block, int) and block >= 0 else None


def _template_file(layers: list[Path], path: Path) -> str | None:
    """A file of the template's as the sandbox would see it (the topmost layer's)."""
    for layer in reversed(layers):
        with contextlib.suppress(OSError):
            return (layer / path).read_text()
    return None


def _template_hostname(layers: list[Path]) -> str:
    """The template's /etc/hostname, else "hearth"."""
    return (_template_file(layers, Path("etc/hostname")) or "").strip() or "hearth"


def _log_tail(directory: Path) -> str:
    try:
        text = (directory / "envd.log").read_text(errors="replace").strip()
    except OSError:
        return ""
    return f"; its output:\n{text[-4000:]}" if text else "; it wrote nothing"


def _recorded_egress(record: SandboxRecord) -> Egress:
    return Egress.recorded(record.egress, allow_internet=record.allow_internet)


async def init_envd(base_url: str, spec: SandboxSpec) -> None:
    """POST envd's /init (at create, at a claim and after every resume)."""
    await envd_client.init(base_url, envd_client.init_body(spec))
