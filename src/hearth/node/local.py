"""The node of a single host: runs sandboxes here and keeps track of them in memory.

`LocalNode` implements the `Node` protocol with one of two runtimes:

- `"container"` (the default): each sandbox is an OCI container with its own network
  slot, cgroup limits, seccomp and user namespace (`runtime/container`). Its state lives
  under `data_dir`, so a node that restarts adopts the sandboxes still running
  (`reconcile()`, run by `start()`) and removes whatever of the others is left. It may
  keep a warm pool per template (`warm()`, `pool.py`): sandboxes started ahead of the
  creates, which a create of their shape claims instead of starting its own.
- `"isolated"`: envd in user, mount, pid and UTS namespaces on the host's loopback
  (`runtime/isolated.IsolatedEnvd`), for hosts where containers cannot run. No network
  slot, no limits, and sandboxes end with the node process.

The API is async; everything that blocks runs in threads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

from hearth import tracing
from hearth.config import settings
from hearth.node.disk.overlay_disk import DEFAULT_SIZE_MB
from hearth.node.guest import envd_client
from hearth.node.guest.envd_bundle import ensure_bundle
from hearth.node.interface import (
    BuildLog,
    BuildRequest,
    EgressNotSupported,
    PauseNotSupported,
    SandboxAddress,
    SandboxNotFound,
    SandboxSpec,
    SandboxUsage,
)
from hearth.node.network import NetworkPool
from hearth.node.network.policy import UNRESTRICTED, Egress
from hearth.node.network.resolvers import sandbox_resolvers
from hearth.node.network.rules import DEFAULT_BLOCKED
from hearth.node.network.slots import DEFAULT_POOL
from hearth.node.pool import PoolShape, WarmPool
from hearth.node.runtime import _freezer
from hearth.node.runtime._threads import to_thread_to_the_end
from hearth.node.usage import ContainerMeter, ContainerProbe, from_envd
from hearth.template import builtins
from hearth.template.artifact import Artifact
from hearth.template.builder import Builder, StartFailed, wait_started
from hearth.template.layers import LayerStore

if TYPE_CHECKING:
    from hearth.node.network.egress import EgressProxy
    from hearth.node.runtime.container import ContainerRuntime
    from hearth.node.runtime.container.lxcfs import Lxcfs
    from hearth.node.runtime.isolated import IsolatedEnvd
    from hearth.tls import LocalCA

log = logging.getLogger(__name__)

RuntimeKind = Literal["container", "isolated", "microvm"]
ENVD_VERSION = "0.6.13"  # the E2B envd whose protocol Hearth's envd speaks
# The disk of a built-in template's build steps (MiB; sparse: only what a step writes is
# used); a user's build is bounded by its template's diskSizeMB instead.
# A step's layer is one RUN's changes, e.g. a pip install of a whole ML stack.
BUILD_DISK_MB = 20480
# Samples asked of envds at once, and how long one may take (`usage()`).
ENVD_SAMPLES_AT_ONCE = 32
ENVD_SAMPLE_TIMEOUT = 2.0
ISOLATED_EGRESS = (
    "Network rules need the container or microvm runtime: isolated sandboxes share the "
    "host's network (start hearth serve with --runtime container)."
)


class UnknownTemplate(LookupError):
    """A create named no artifact and no built-in template."""


class _Sandbox(Protocol):
    @property
    def address(self) -> SandboxAddress: ...

    @property
    def artifact(self) -> Artifact | None:
        """What it was created from, as its record keeps it (None: not recorded)."""

    async def stop(self) -> None: ...

    async def set_egress(self, egress: Egress) -> None:
        """Replace what it may reach (EgressNotSupported where the runtime cannot)."""

    async def pause(self, memory: bool) -> _Paused:
        """Pause; with `memory` its processes are kept (the result says whether they
        were). PauseNotSupported if the runtime cannot pause it at all."""


class _Paused(Protocol):
    @property
    def memory(self) -> bool:
        """True: a resume continues its processes; False: it boots over its files."""

    async def resume(self, spec: SandboxSpec) -> _Sandbox: ...

    async def discard(self) -> None:
        """Release everything the paused sandbox holds, its disk state too."""

    @property
    def artifact(self) -> Artifact | None:
        """What it was created from, as its record keeps it (a restarted node's too)."""

    # Optional: `async def drop_memory()`, for a pause that holds host memory (a frozen
    # container): turn it into a filesystem-only pause. `memory` is False afterwards.


class _Runtime(Protocol):
    """What LocalNode needs of a runtime (to move to runtime/base.py with a second user)."""

    # True: a started sandbox already runs its template's start command (a microVM's
    # snapshot holds it); False: the node starts it.
    starts_templates: bool

    async def setup(self) -> None: ...

    async def start(self, spec: SandboxSpec, layers: list[Path]) -> _Sandbox:
        """Start a sandbox of `spec` (its artifact set) over the artifact's layers."""

    async def reconcile(self) -> tuple[Mapping[str, _Sandbox], list[str]]: ...

    async def capture(
        self, held: _Sandbox | _Paused, artifact: Artifact, memory: bool, layers: LayerStore
    ) -> Artifact:
        """The artifact of `held`'s state now (see `Node.snapshot`): a layer it writes
        into `layers` over `artifact`'s, or a state of its own (`Artifact.saved`)."""

    def has_saved(self, name: str) -> bool: ...

    async def forget_saved(self, names: list[str]) -> None:
        """Drop saved states, each once no sandbox started from it remains."""

    async def reconcile_paused(self) -> Mapping[str, _Paused]:
        """The paused sandboxes found at start (called after `reconcile`)."""

    async def warm(
        self,
        artifact: Artifact,
        layers: list[Path],
        cpu_count: int,
        memory_mb: int,
        disk_mb: int | None = None,
    ) -> None:
        """Prepare ahead what creates of that shape start from (LocalNode keeps the
        container runtime's pool itself)."""

    async def detach(self) -> None:
        """Release what the runtime holds beside its sandboxes (a node that exits and
        will adopt its sandboxes again)."""

    async def shutdown(self) -> None: ...


class LocalNode:
    """Runs sandboxes on this host. Use `async with LocalNode(...)`, or `start()` then
    `close()`; `create()` starts the node itself if need be."""

    def __init__(
        self,
        data_dir: Path,
        *,
        runtime: RuntimeKind = "container",
        cache_dir: Path | None = None,
        bundle_dir: Path | None = None,
        oci_runtime: str | None = None,
        network_pool: str = DEFAULT_POOL,
        blocked_networks: tuple[str, ...] | None = None,
        pids_limit: int = 4096,
        start_timeout: float = 60.0,
        no_new_privileges: bool = False,
        dns_servers: list[str] | None = None,
        memory_reserve_mb: int | None = None,
        registry_mirror: str | None = None,
        public_ports: tuple[int, ...] = (),
        ca: LocalCA | None = None,
    ) -> None:
        """`public_ports`: the server's ports sandboxes may reach (another sandbox's
        ports through the proxy); `ca`: the local CA (`hearth.tls.LocalCA`) whose
        certificates the egress proxy presents for header transforms over TLS."""
        self.data_dir = Path(data_dir)
        # Below this much available host memory, paused sandboxes that hold memory
        # (frozen containers) are turned into filesystem-only pauses, oldest first.
        self.memory_reserve_mb = (
            memory_reserve_mb if memory_reserve_mb is not None else _default_reserve_mb()
        )
        self.kind = runtime
        self._cache_dir = cache_dir
        self.layers = LayerStore.of_cache(cache_dir)
        # Layers of sandboxes' state (snapshots, forks): data, not cache, so they live
        # with the node's sandboxes, not in the cache a user may wipe.
        self.saved_layers = LayerStore(self.data_dir / "layers")
        self._registry_mirror = registry_mirror
        self._builder: Builder | None = None
        self._build_driver: _ContainerDriver | None = None  # builds run in containers
        self._builtins: dict[str, Artifact] = {}
        self._builtin_locks: dict[str, asyncio.Lock] = {}
        self._pool_artifacts: dict[str, Artifact] = {}  # pool kind (artifact key) -> it
        self._pool_templates: dict[str, str] = {}  # pool kind -> the template it serves
        self._bundle_dir = bundle_dir
        self._blocked = blocked_networks if blocked_networks is not None else DEFAULT_BLOCKED
        self._resolvers = sandbox_resolvers(dns_servers)
        self._ca = ca
        self._egress: EgressProxy | None = None  # the egress proxy, from start() on
        self._policies: dict[str, Egress] = {}  # slot address -> its policy, for the proxy
        # The drivers' keyword arguments (each takes what concerns it).
        self._options: dict[str, Any] = {
            "oci_runtime": oci_runtime,
            "network_pool": network_pool,
            "blocked_networks": self._blocked,
            "pids_limit": pids_limit,
            "start_timeout": start_timeout,
            "no_new_privileges": no_new_privileges,
            "dns_servers": self._resolvers,
        }
        # What every slot of this node gets, started or not (a build through a node that
        # was never started still resolves names).
        self._options["slot_rules"] = {"resolvers": self._resolvers, "public_ports": public_ports}
        if ca is not None:
            self._options["extra_ca"] = ca.cert_pem
        self.runtime: _Runtime | None = None
        self._sandboxes: dict[str, _Sandbox] = {}
        self._paused: dict[str, _Paused] = {}
        # One pause, resume or kill at a time per sandbox.
        self._locks: dict[str, asyncio.Lock] = {}
        self._starting: set[str] = set()
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._pool: WarmPool[_Sandbox] | None = None  # container runtime only
        self._tasks: set[asyncio.Task[None]] = set()  # background preparation
        # What `usage()` measures with: the host's view of containers, and for the
        # others envd, with the token each sandbox's envd was given.
        self._meter = ContainerMeter()
        self._tokens: dict[str, str | None] = {}
        self._metering = asyncio.Lock()  # one usage() at a time; close() waits for it

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> list[str]:
        """Prepare the host and reconcile; returns what reconcile removed."""
        async with self._start_lock:
            if self.runtime is not None:
                return []
            if self.kind != "isolated":
                self._options["slot_rules"] = {
                    **self._options["slot_rules"],
                    **await self._start_egress(),
                }
            if self.kind == "container":
                runtime: _Runtime = _ContainerDriver(
                    self.data_dir, self._bundle_dir, **self._options
                )
            elif self.kind == "isolated":
                runtime = _IsolatedDriver(self._cache_dir, self._bundle_dir)
            elif self.kind == "microvm":
                from hearth.node.runtime.microvm.driver import MicroVMDriver

                runtime = MicroVMDriver(
                    self.data_dir, self._cache_dir, self._bundle_dir, **self._options
                )
            else:
                raise ValueError(f"unknown runtime {self.kind!r} (container, isolated or microvm)")
            await runtime.setup()
            self.runtime = runtime
            if isinstance(runtime, _ContainerDriver):
                self._pool = WarmPool(self._start_member, self._claim_member)
            return await self.reconcile()

    async def _start_egress(self) -> dict:
        """Start the egress proxy; returns what network pools need to send it traffic."""
        import ipaddress
        import ssl

        from hearth.node.network.egress import EgressProxy

        loop = asyncio.get_running_loop()
        upstream = ssl.create_default_context()
        if self._ca is not None:
            upstream.load_verify_locations(cadata=self._ca.cert_pem)
        # The host's own addresses too: a name that resolves to one must not reach the
        # host's services through the proxy (the kernel keeps sandboxes from them).
        own = await asyncio.to_thread(_host_addresses)
        proxy = EgressProxy(
            self._policies.get,
            blocked=[ipaddress.ip_network(b) for b in (*self._blocked, *own)],
            nameservers=self._resolvers,
            tls_for=self._ca.server_context if self._ca is not None else None,
            upstream_tls=upstream,
        )
        port = await proxy.start("0.0.0.0", 0)
        self._egress = proxy

        def on_egress(address: str, egress: Egress | None) -> None:
            # Called from the pools' threads: the proxy lives in this loop.
            if egress is None:
                self._policies.pop(address, None)
            else:
                self._policies[address] = egress
            loop.call_soon_threadsafe(proxy.cut, address)

        return {"egress_port": port, "on_egress": on_egress}

    async def reconcile(self) -> list[str]:
        """Adopt the sandboxes a previous node process left running and remove the
        leftovers of the rest. Returns a description of what was removed."""
        assert self.runtime is not None
        adopted, removed = await self.runtime.reconcile()
        for sandbox_id, sandbox in adopted.items():
            self._sandboxes.setdefault(sandbox_id, sandbox)
        for sandbox_id, paused in (await self.runtime.reconcile_paused()).items():
            self._paused.setdefault(sandbox_id, paused)
        removed += [f"layer {key}" for key in await self._remove_orphans()]
        if removed:
            log.info("reconcile removed: %s", ", ".join(removed))
        return removed

    async def create(self, spec: SandboxSpec) -> SandboxAddress:
        attributes = {"sandbox.id": spec.sandbox_id, "template.id": spec.template_id}
        with tracing.span("node.create", attributes):
            return await self._create(spec)

    async def _create(self, spec: SandboxSpec) -> SandboxAddress:
        if self._closed:
            raise RuntimeError("the node is closed")
        await self.start()
        assert self.runtime is not None
        sandbox_id = spec.sandbox_id
        if sandbox_id in self._sandboxes or sandbox_id in self._starting:
            raise ValueError(f"sandbox {sandbox_id} exists")
        self._starting.add(sandbox_id)
        try:
            spec = replace(spec, artifact=await self._artifact(spec))
            assert spec.artifact is not None
            created = tracing.current_span()  # node.create's
            attributes = {
                "sandbox.id": sandbox_id,
                "template.id": spec.template_id,
                "runtime": self.kind,
            }
            with tracing.span("runtime.start", attributes) as started:
                # A member is taken only by a create of its shape (vCPUs, memory and disk).
                pool = self._pool
                sandbox = await pool.take(spec.artifact.key, spec) if pool is not None else None
                for span in (created, started):
                    span.set_attribute("pooled", sandbox is not None)
                if sandbox is None:
                    # A saved state holds its disk: the layers only say what it was made of.
                    layers = [] if spec.artifact.saved else self._layer_paths(spec.artifact)
                    sandbox = await self.runtime.start(spec, layers)
                    await self._start_template(sandbox, spec)  # stops the sandbox if it fails
            self._sandboxes[sandbox_id] = sandbox
            self._tokens[sandbox_id] = spec.envd_access_token
        finally:
            self._starting.discard(sandbox_id)
        return sandbox.address

    async def _artifact(self, spec: SandboxSpec) -> Artifact:
        if spec.artifact is not None:
            return spec.artifact
        if spec.template_id in builtins.names():
            return await self.builtin(spec.template_id)
        raise UnknownTemplate(f"template {spec.template_id!r} not found")

    def _layer_paths(self, artifact: Artifact) -> list[Path]:
        missing = self._missing(artifact)
        if missing:
            raise UnknownTemplate(
                f"the template's layers {', '.join(missing)} are not on this node: build it again"
            )
        return [self._store_of(key).path(key) for key in artifact.layers]

    def _store_of(self, key: str) -> LayerStore:
        return self.saved_layers if self.saved_layers.has(key) else self.layers

    def _missing(self, artifact: Artifact) -> list[str]:
        if artifact.saved:
            assert self.runtime is not None
            return [] if self.runtime.has_saved(artifact.saved) else [artifact.saved]
        return [key for key in artifact.layers if not self._store_of(key).has(key)]

    async def _start_template(self, sandbox: _Sandbox, spec: SandboxSpec) -> None:
        """Run the template's start command in a new sandbox and wait for its ready
        command (an explicit one: E2B's implicit `sleep 20` was waited out by the
        build). A failure stops the sandbox, so a failed create leaves nothing."""
        artifact = spec.artifact
        assert self.runtime is not None, "started by create()"
        if artifact is None or not artifact.start_cmd or self.runtime.starts_templates:
            return
        address = sandbox.address
        try:
            await wait_started(
                f"http://{address.host}:{address.port(envd_client.ENVD_PORT)}",
                artifact,
                access_token=spec.envd_access_token,
                wait_default=False,
            )
        except BaseException:
            await sandbox.stop()
            raise

    # --- templates ----------------------------------------------------------------------

    async def builtin(self, name: str, log: BuildLog | None = None) -> Artifact:
        """The artifact of the built-in template `name`, built (or found cached) here."""
        if name in self._builtins:
            return self._builtins[name]
        async with self._builtin_locks.setdefault(name, asyncio.Lock()):
            if name not in self._builtins:
                recipe = builtins.recipe(name, self.layers.root.parent / "builtin-files")
                parent = (
                    await self.builtin(recipe.base.template, log) if recipe.base.template else None
                )
                request = BuildRequest(name, "builtin", None, recipe, parent=parent)
                self._builtins[name] = await self.build(request, log or _progress_log)
        return self._builtins[name]

    async def prepare(self, template_id: str) -> None:
        """Build (or find cached) the built-in template `template_id`."""
        await self.builtin(template_id)

    async def build(self, request: BuildRequest, log: BuildLog) -> Artifact:
        await self.start()
        builder = await self._ensure_builder()
        return await builder.build(request, log)

    def _unpool(self, kind: str) -> None:
        """Stop keeping sandboxes of the artifact `kind` started."""
        assert self._pool is not None
        shape = self._pool.shape(kind)
        if shape is not None:
            self._pool.configure(replace(shape, size=0))
        self._pool_templates.pop(kind, None)

    def has_artifact(self, artifact: Artifact) -> bool:
        if artifact.saved and self.runtime is None:
            return True  # known once the runtime is up; a create finds out
        return not self._missing(artifact)

    async def forget_artifacts(self, keep: list[Artifact], drop: list[Artifact]) -> None:
        kept_keys = {a.key for a in keep}
        if self._pool is not None:
            for artifact in drop:
                if artifact.key not in kept_keys:
                    self._unpool(artifact.key)
        # Sandboxes of a deleted template keep running, and paused ones can resume:
        # what only they use goes when they do (see `_remove_orphans`).
        kept = [*keep, *self._builtins.values()]
        used = {key for a in kept for key in a.layers}
        held = {key for a in self._held_artifacts() for key in a.layers}
        doomed = {key for a in drop for key in a.layers} - used
        saved = {key for key in doomed if self.saved_layers.has(key)}
        await asyncio.to_thread(self.saved_layers.orphan, sorted(saved & held))
        await asyncio.to_thread(self.saved_layers.remove, sorted(saved - held))
        if doomed - saved - held:
            await asyncio.to_thread(self.layers.remove, sorted(doomed - saved - held))
        states = sorted({a.saved for a in drop if a.saved} - kept_keys)
        if states and self.runtime is not None:
            await self.runtime.forget_saved(states)

    def _held_artifacts(self) -> list[Artifact]:
        holders: list[_Sandbox | _Paused] = [*self._sandboxes.values(), *self._paused.values()]
        held = [s.artifact for s in holders]
        return [a for a in held if a is not None]

    async def _remove_orphans(self) -> list[str]:
        """Remove the saved layers no artifact keeps that no sandbox here uses now."""
        held = {key for a in self._held_artifacts() for key in a.layers}
        orphans = await asyncio.to_thread(self.saved_layers.orphans)
        doomed = [key for key in orphans if key not in held]
        if doomed:
            await asyncio.to_thread(self.saved_layers.remove, doomed)
        return doomed

    # --- snapshots ----------------------------------------------------------------------

    async def snapshot(self, sandbox_id: str, *, memory: bool = True) -> Artifact:
        await self.start()
        assert self.runtime is not None
        async with self._lock(sandbox_id):
            held = self._sandboxes.get(sandbox_id) or self._paused.get(sandbox_id)
            if held is None:
                raise SandboxNotFound(sandbox_id)
            artifact = held.artifact
            if artifact is None:
                raise PauseNotSupported(
                    f"sandbox {sandbox_id} records no template to snapshot over: the isolated"
                    " runtime keeps no files of its own (use the container runtime)"
                )
            return await self.runtime.capture(held, artifact, memory, self.saved_layers)

    async def _ensure_builder(self) -> Builder:
        if self._builder is not None:
            return self._builder
        config = settings()
        self._builder = Builder(
            self.layers,
            self._open_build_sandbox,
            self.builtin,
            envd_version=ENVD_VERSION,
            bundle_dir=ensure_bundle(self._bundle_dir),
            registry_mirror=self._registry_mirror or config.registry_mirror,
            ca_bundle=config.build_ca_bundle,
        )
        return self._builder

    async def _open_build_sandbox(
        self, layers: list[Path], cpu_count: int, memory_mb: int, disk_mb: int | None
    ) -> _BuildSandbox:
        """A container sandbox for a build step, whatever runs the node's others. The
        driver is set up on the first step: a build found whole in the cache needs none."""
        driver = self.runtime if isinstance(self.runtime, _ContainerDriver) else None
        if driver is None:
            if self._build_driver is None:
                build_driver = _ContainerDriver(
                    self.data_dir / "builds", self._bundle_dir, **self._options
                )
                await build_driver.setup()
                self._build_driver = build_driver
            driver = self._build_driver
        spec = SandboxSpec(
            sandbox_id="b" + secrets.token_hex(10)[:19],
            template_id="build",
            cpu_count=cpu_count,
            memory_mb=memory_mb,
            disk_mb=disk_mb or BUILD_DISK_MB,
        )
        assert driver.runtime is not None, "set up"
        return _BuildSandbox(await driver.runtime.start(spec, layers, build=True))

    async def warm(
        self,
        template_id: str,
        *,
        artifact: Artifact | None = None,
        cpu_count: int,
        memory_mb: int,
        size: int,
        disk_mb: int | None = None,
    ) -> None:
        """Keep `size` sandboxes of the template (its `artifact`, else the built-in
        `template_id`) started ahead of the creates of that shape (internet allowed),
        its start command ready; 0 stops keeping them. Returns at once: they start in
        the background. The container runtime keeps a pool of sandboxes; the microvm
        runtime takes the template's snapshot and pre-spawns its VMMs (its creates
        restore from the snapshot); isolated envds start fast enough."""
        await self.start()
        if self._closed:
            return
        artifact = artifact or await self.builtin(template_id)
        if self._pool is not None:
            # A rebuilt template's pool holds its new build: the old one's members go.
            for kind, template in list(self._pool_templates.items()):
                if template == template_id and kind != artifact.key:
                    self._unpool(kind)
            self._pool_artifacts[artifact.key] = artifact
            self._pool_templates[artifact.key] = template_id
            shape = PoolShape(
                artifact.key,
                template_id,
                cpu_count,
                memory_mb,
                size,
                disk_mb or DEFAULT_SIZE_MB,
            )
            self._pool.configure(shape)
        elif size > 0:
            self._background(self._warm_runtime(artifact, cpu_count, memory_mb, disk_mb))

    async def _warm_runtime(
        self, artifact: Artifact, cpu_count: int, memory_mb: int, disk_mb: int | None
    ) -> None:
        assert self.runtime is not None
        try:
            layers = self._layer_paths(artifact)
            await self.runtime.warm(artifact, layers, cpu_count, memory_mb, disk_mb)
        except Exception as e:  # noqa: BLE001 - a create builds it again and reports it
            log.warning("could not prepare sandboxes of %s ahead: %s", artifact.key, e)

    def _background(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_background(self) -> None:
        tasks, self._tasks = set(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def pooled(self) -> dict[str, int]:
        """How many pooled sandboxes wait now, per template (tests and diagnostics)."""
        if self._pool is None:
            return {}
        return {self._pool_templates.get(k, k): n for k, n in self._pool.sizes().items()}

    async def _start_member(self, spec: SandboxSpec, kind: str) -> _Sandbox:
        assert isinstance(self.runtime, _ContainerDriver)
        artifact = self._pool_artifacts[kind]
        spec = replace(spec, artifact=artifact)
        sandbox = await self.runtime.start_pooled(spec, self._layer_paths(artifact))
        await self._start_template(sandbox, spec)  # stops the sandbox if it fails
        return sandbox

    async def _claim_member(self, sandbox: _Sandbox, kind: str, spec: SandboxSpec) -> None:
        assert isinstance(self.runtime, _ContainerDriver)
        artifact = self._pool_artifacts[kind]
        if artifact.start_cmd and artifact.ready_cmd and artifact.ready_explicit:
            address = sandbox.address
            check = await envd_client.run(
                f"http://{address.host}:{address.port(envd_client.ENVD_PORT)}",
                envd_client.shell(artifact.ready_cmd),
                user=artifact.user,
            )
            if check.exit_code != 0:
                raise StartFailed(f"the start command of {kind} is no longer ready")
        await self.runtime.claim(sandbox, spec)

    async def kill(self, sandbox_id: str) -> bool:
        async with self._lock(sandbox_id):
            sandbox = self._sandboxes.pop(sandbox_id, None)
            paused = self._paused.pop(sandbox_id, None)
            self._locks.pop(sandbox_id, None)
            self._tokens.pop(sandbox_id, None)
            if sandbox is not None:
                await sandbox.stop()
            elif paused is not None:
                await paused.discard()
            else:
                return False
        await self._remove_orphans()
        return True

    async def pause(self, sandbox_id: str, *, memory: bool = True) -> bool:
        async with self._lock(sandbox_id):
            sandbox = self._sandboxes.get(sandbox_id)
            if sandbox is None:
                raise SandboxNotFound(sandbox_id)
            paused = await sandbox.pause(memory)
            del self._sandboxes[sandbox_id]
            self._paused[sandbox_id] = paused
            return paused.memory

    async def resume(self, spec: SandboxSpec) -> SandboxAddress:
        sandbox_id = spec.sandbox_id
        async with self._lock(sandbox_id):
            paused = self._paused.get(sandbox_id)
            if paused is None:
                raise SandboxNotFound(sandbox_id)
            cold = not paused.memory
            if spec.artifact is None:
                spec = replace(spec, artifact=paused.artifact)
            if spec.artifact is None and spec.template_id in builtins.names():
                spec = replace(spec, artifact=await self.builtin(spec.template_id))
            sandbox = await paused.resume(spec)
            del self._paused[sandbox_id]
            self._sandboxes[sandbox_id] = sandbox
            self._tokens[sandbox_id] = spec.envd_access_token
            artifact = spec.artifact
            if cold and artifact is not None and artifact.start_cmd:
                # A cold boot starts the template's services again, as a create does.
                address = sandbox.address
                await wait_started(
                    f"http://{address.host}:{address.port(envd_client.ENVD_PORT)}",
                    artifact,
                    access_token=spec.envd_access_token,
                    wait_default=False,
                )
            return sandbox.address

    def headers_for(self, address: str, host: str) -> dict[str, str]:
        """The header transforms for host `host` of the sandbox at `address` (the gateway
        applies them to sandboxes' requests to the server's own URLs)."""
        policy = self._policies.get(address)
        return policy.headers_for(host) if policy is not None else {}

    async def update_network(self, sandbox_id: str, egress: Egress) -> None:
        """Replace a running sandbox's egress policy at once (connections it now forbids
        are cut); a paused one takes its policy from the spec of its resume."""
        async with self._lock(sandbox_id):
            sandbox = self._sandboxes.get(sandbox_id)
            if sandbox is None:
                if sandbox_id in self._paused:
                    return
                raise SandboxNotFound(sandbox_id)
            await sandbox.set_egress(egress)

    async def paused(self) -> dict[str, bool]:
        return {sandbox_id: p.memory for sandbox_id, p in self._paused.items()}

    async def relieve_memory(self, available_mb: int | None = None) -> list[str]:
        """When the host runs short of memory (less available than `memory_reserve_mb`),
        turn memory pauses that hold host memory into filesystem-only ones, oldest pause
        first, until enough is free. Returns the ids whose memory was dropped; their
        next resume boots again over their files (`paused()` says so)."""
        dropped: list[str] = []
        for sandbox_id in list(self._paused):
            available = available_mb if available_mb is not None else _available_mb()
            if available >= self.memory_reserve_mb:
                break
            async with self._lock(sandbox_id):
                paused = self._paused.get(sandbox_id)
                drop = getattr(paused, "drop_memory", None)
                if paused is None or not paused.memory or drop is None:
                    continue
                await drop()
                dropped.append(sandbox_id)
                log.warning(
                    "host memory low: sandbox %s is now paused to its files only", sandbox_id
                )
            available_mb = None  # measure again after each release
        return dropped

    def paused_sandbox(self, sandbox_id: str) -> _Paused:
        """The runtime's object for a paused sandbox (tests and diagnostics)."""
        try:
            return self._paused[sandbox_id]
        except KeyError:
            raise SandboxNotFound(sandbox_id) from None

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def address(self, sandbox_id: str) -> SandboxAddress | None:
        sandbox = self._sandboxes.get(sandbox_id)
        return sandbox.address if sandbox else None

    def sandbox(self, sandbox_id: str) -> _Sandbox:
        """The runtime's object for a running sandbox (tests and diagnostics)."""
        try:
            return self._sandboxes[sandbox_id]
        except KeyError:
            raise SandboxNotFound(sandbox_id) from None

    async def running(self) -> list[str]:
        return sorted(self._sandboxes)

    async def usage(self, sandbox_ids: Collection[str] | None = None) -> dict[str, SandboxUsage]:
        """A sample of what each running sandbox (or each of `sandbox_ids` that runs)
        uses of its own limits, by id. Paused ones are not sampled; one that a pause,
        resume or kill holds, or that stops meanwhile, is left out: a sample never
        waits for a sandbox's teardown, and one that comes during the reads (a few
        milliseconds) waits for them rather than unmount a disk being read."""
        async with self._metering:
            if self._closed:
                return {}
            wanted = list(self._sandboxes) if sandbox_ids is None else sandbox_ids
            held: list[asyncio.Lock] = []
            try:
                probes: dict[str, ContainerProbe] = {}
                others: dict[str, _Sandbox] = {}
                for sandbox_id in wanted:
                    sandbox = self._sandboxes.get(sandbox_id)
                    if sandbox is None or self._lock(sandbox_id).locked():
                        continue
                    lock = self._lock(sandbox_id)
                    probe = getattr(sandbox, "usage_probe", None)
                    if probe is None:
                        others[sandbox_id] = sandbox  # asked over the network: no lock
                    elif (found := probe()) is not None:
                        # Free, so taken at once: a kill that comes now waits for the
                        # reads, and no read meets a disk that is being unmounted.
                        await lock.acquire()
                        held.append(lock)
                        probes[sandbox_id] = found
                read = to_thread_to_the_end(
                    functools.partial(self._meter.read, probes, every=sandbox_ids is None)
                )
                hosted, asked = await asyncio.gather(read, self._envd_usage(others))
                return {**hosted, **asked}
            finally:
                for lock in held:
                    lock.release()

    async def _envd_usage(self, sandboxes: Mapping[str, _Sandbox]) -> dict[str, SandboxUsage]:
        """Samples from the sandboxes' own envds (a microVM's guest sees its own limits;
        an isolated sandbox has none)."""
        if not sandboxes:
            return {}
        found: dict[str, SandboxUsage] = {}
        ask = asyncio.Semaphore(ENVD_SAMPLES_AT_ONCE)

        async def sample(client: Any, sandbox_id: str, sandbox: _Sandbox) -> None:
            record = getattr(sandbox, "record", None)
            token = self._tokens.get(sandbox_id) or getattr(record, "envd_token", None)
            headers = {"X-Access-Token": token} if token else {}
            async with ask:
                try:
                    address = sandbox.address
                    port = address.port(envd_client.ENVD_PORT)
                    url = f"http://{address.host}:{port}/metrics"
                    response = await client.get(url, headers=headers)
                    response.raise_for_status()
                    found[sandbox_id] = from_envd(response.json(), time.time())
                except Exception as e:  # a sandbox that does not answer has no sample
                    log.debug("no sample of %s from its envd: %s", sandbox_id, e)

        async with envd_client.client(ENVD_SAMPLE_TIMEOUT, read=ENVD_SAMPLE_TIMEOUT) as client:
            await asyncio.gather(*(sample(client, i, s) for i, s in sandboxes.items()))
        return found

    async def detach(self) -> None:
        """Let go of the sandboxes without stopping them, for a node process that exits
        and will be started again: its next `start()` adopts them (see `reconcile`).
        Container and microVM sandboxes outlive the node process; isolated ones end with it.
        The warm pool's sandboxes are stopped: nobody has claimed them; so are build
        sandboxes (a build cut off is failed at the next start) and their driver's LXCFS."""
        self._closed = True
        async with self._metering:  # a sample under way reads what is let go of here
            pass
        await self._cancel_background()
        if self._pool is not None:
            await self._pool.close()
        self._sandboxes = {}
        self._paused = {}
        if self.runtime is not None:
            await self.runtime.detach()
        await self._release_node_wide()

    async def _release_node_wide(self) -> None:
        """What no sandbox outlives: the build driver (its sandboxes, its LXCFS) and the
        egress proxy."""
        if self._build_driver is not None:
            await self._build_driver.shutdown()
            self._build_driver = None
        if self._egress is not None:
            await self._egress.close()
            self._egress = None

    async def close(self) -> None:
        """Stop every sandbox, paused ones too, and release what the node holds."""
        self._closed = True
        async with self._metering:  # a sample under way reads what is stopped here
            pass
        await self._cancel_background()
        if self._pool is not None:
            await self._pool.close()
        sandboxes, self._sandboxes = self._sandboxes, {}
        paused, self._paused = self._paused, {}
        await asyncio.gather(
            *(s.stop() for s in sandboxes.values()),
            *(p.discard() for p in paused.values()),
            return_exceptions=True,
        )
        if self.runtime is not None:
            await self.runtime.shutdown()
        await self._release_node_wide()


def _host_addresses() -> list[str]:
    """Every IPv4 address of this host's interfaces, as /32s."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [f"{a.get_attr('IFA_ADDRESS')}/32" for a in ipr.get_addr(family=2)]


def _progress_log(level: str, message: str, step: str | None) -> None:
    """Build logs of the built-in templates when nobody records them: the console."""
    from hearth.node.disk.cache import progress

    if level != "debug":
        progress(message)


class _BuildSandbox:
    """A container sandbox a build step runs in (see `template.builder.BuildSandbox`)."""

    def __init__(self, sandbox) -> None:
        self._sandbox = sandbox

    @property
    def url(self) -> str:
        return f"http://{self._sandbox.address.host}:{envd_client.ENVD_PORT}"

    async def commit(self, dest: Path) -> None:
        await self._sandbox.commit(dest)

    async def stop(self) -> None:
        await self._sandbox.stop()


class _ContainerDriver:
    """The container runtime, its network pool, and the node's lxcfs daemon: started
    with it, stopped by `shutdown` and `detach` unless containers that outlive the node
    are bound to it."""

    starts_templates = False

    def __init__(
        self,
        data_dir: Path,
        bundle_dir: Path | None,
        *,
        oci_runtime: str | None,
        network_pool: str,
        blocked_networks: tuple[str, ...],
        slot_rules: dict | None = None,
        **options: Any,  # the ContainerRuntime's
    ) -> None:
        self._data_dir = data_dir
        self._bundle_dir = bundle_dir
        self._oci_runtime = oci_runtime
        self._pool_cidr = network_pool
        self._blocked = blocked_networks
        self._slot_rules = slot_rules or {}
        self._options = options
        self.runtime: ContainerRuntime | None = None
        self._adopted_paused: dict[str, _Paused] = {}
        self.lxcfs: Lxcfs | None = None

    async def setup(self) -> None:
        from hearth.node.runtime.container import ContainerRuntime, detect
        from hearth.node.runtime.container.lxcfs import Lxcfs

        lxcfs = Lxcfs(self._data_dir / "lxcfs")

        def prepare() -> ContainerRuntime:
            oci = detect(self._data_dir / "oci", self._oci_runtime)
            pool = NetworkPool(
                self._data_dir / "netns",
                self._pool_cidr,
                blocked=self._blocked,
                **self._slot_rules,
            )
            runtime = ContainerRuntime(
                self._data_dir,
                oci,
                pool,
                ensure_bundle(self._bundle_dir),
                lxcfs=lxcfs,
                **self._options,
            )
            runtime.setup()
            pool.setup()
            return runtime

        # The daemon comes up (~20 ms) beside the runtime's setup.
        self.lxcfs = lxcfs
        daemon = asyncio.ensure_future(lxcfs.start())
        try:
            runtime = self.runtime = await asyncio.to_thread(prepare)
        except BaseException:
            await asyncio.gather(daemon, return_exceptions=True)
            await lxcfs.close()
            raise
        await daemon
        lxcfs.on_change = runtime.rebind_lxcfs
        log.info("container runtime: %s (%s)", runtime.oci.name, runtime.oci.binary)

    async def start(self, spec: SandboxSpec, layers: list[Path]) -> _Sandbox:
        assert self.runtime is not None, "setup() first"
        return await self.runtime.start(spec, layers)

    async def start_pooled(self, spec: SandboxSpec, layers: list[Path]) -> _Sandbox:
        assert self.runtime is not None, "setup() first"
        return await self.runtime.start(spec, layers, pooled=True)

    async def claim(self, sandbox: _Sandbox, spec: SandboxSpec) -> None:
        from hearth.node.runtime.container import ContainerSandbox

        assert self.runtime is not None, "setup() first"
        assert isinstance(sandbox, ContainerSandbox), "a pool member this runtime started"
        await self.runtime.claim(sandbox, spec)

    async def reconcile(self) -> tuple[dict[str, _Sandbox], list[str]]:
        from hearth.node.runtime.container import PausedContainer

        assert self.runtime is not None and self.lxcfs is not None, "setup() first"
        # Keyed by the API's id: a claimed pool member's own id is not the API's.
        adopted, removed = await self.runtime.reconcile()
        if not self.lxcfs.adopted:
            # A new daemon (or none): what the adopted sandboxes were bound to is dead.
            await to_thread_to_the_end(self.runtime.rebind_lxcfs)
        self._adopted_paused = {s.api_id: PausedContainer(s) for s in adopted if s.paused}
        return {s.api_id: s for s in adopted if not s.paused}, removed

    async def reconcile_paused(self) -> dict[str, _Paused]:
        found, self._adopted_paused = self._adopted_paused, {}
        return found

    async def capture(
        self, held: _Sandbox | _Paused, artifact: Artifact, memory: bool, layers: LayerStore
    ) -> Artifact:
        """The sandbox's files as one more layer. Its memory is not kept: CRIU cannot
        checkpoint on the kernels this runs on, so its creates run the template's start
        command again over the files."""
        from hearth.node.runtime.container import ContainerSandbox, PausedContainer

        runtime = self.runtime
        assert runtime is not None, "setup() first"
        sandbox = held.sandbox if isinstance(held, PausedContainer) else held
        assert isinstance(sandbox, ContainerSandbox), "the node holds this runtime's own"
        key = "snap" + secrets.token_hex(14)

        def capture(fs: Path) -> dict:
            runtime.capture(sandbox, fs)
            return {"snapshot of": sandbox.api_id}

        await to_thread_to_the_end(layers.ensure, key, capture)
        return replace(artifact, layers=(*artifact.layers, key), saved=None, memory=False)

    def has_saved(self, name: str) -> bool:
        return False

    async def forget_saved(self, names: list[str]) -> None:
        return None

    async def warm(
        self,
        artifact: Artifact,
        layers: list[Path],
        cpu_count: int,
        memory_mb: int,
        disk_mb: int | None = None,
    ) -> None:
        return None

    async def detach(self) -> None:
        if self.runtime is not None:
            await self.runtime.let_go()
        await self._let_go_of_lxcfs()

    async def _let_go_of_lxcfs(self) -> None:
        """Leave the daemon running for the containers still bound to it (this node's
        that outlive it, or another node process's on the same directory), else stop it."""
        if self.lxcfs is None:
            return
        runtime = self.runtime
        inits = await asyncio.to_thread(runtime.running_inits) if runtime is not None else []
        if inits:
            await self.lxcfs.detach()
        else:
            await self.lxcfs.close()

    async def shutdown(self) -> None:
        runtime = self.runtime
        if runtime is None:
            return

        # The rules table stays (empty of slots), as forwarding does: another node
        # process on this host may still use them.
        await runtime.let_go()
        await asyncio.to_thread(runtime.remove_cgroup_parents)
        await self._let_go_of_lxcfs()


class _IsolatedSandbox:
    """An isolated envd; with a freezer group (cgroup v1 hosts) it pauses with memory."""

    def __init__(self, envd: IsolatedEnvd, freezer: _freezer.Freezer | None = None) -> None:
        self._envd = envd
        self._freezer = freezer
        self._frozen = False
        self._lock = asyncio.Lock()

    @property
    def address(self) -> SandboxAddress:
        return SandboxAddress("127.0.0.1", {envd_client.ENVD_PORT: self._envd.port})

    artifact = None  # its layers are the isolated envd's to hold: gone with it

    async def set_egress(self, egress: Egress) -> None:
        if egress != UNRESTRICTED:
            raise EgressNotSupported(ISOLATED_EGRESS)

    async def stop(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        freezer = self._freezer
        if freezer is not None and self._frozen:
            freezer.kill()
        try:
            self._envd.stop()
        finally:
            if freezer is not None:
                freezer.remove()

    async def pause(self, memory: bool) -> _Paused:
        if self._freezer is None:
            raise PauseNotSupported(
                "this host has no cgroup v1 freezer, which the isolated runtime pauses"
                " with: use the container runtime (hearth serve --runtime container)"
            )
        if not memory:
            raise PauseNotSupported(
                "the isolated runtime keeps no disk of its own to pause to: pause with"
                " memory, or use the container runtime (hearth serve --runtime container)"
            )
        await asyncio.to_thread(self._freezer.freeze)
        self._frozen = True
        return _IsolatedPaused(self)


class _IsolatedPaused:
    """A frozen isolated envd: resume thaws it, then sets the clock through /init."""

    memory = True
    artifact = None  # never needed: it resumes only with its memory

    def __init__(self, sandbox: _IsolatedSandbox) -> None:
        self._sandbox = sandbox

    async def resume(self, spec: SandboxSpec) -> _Sandbox:
        from hearth.node.runtime.container.sandbox import init_envd

        sandbox = self._sandbox
        assert sandbox._freezer is not None
        await asyncio.to_thread(sandbox._freezer.thaw)
        sandbox._frozen = False
        await init_envd(f"http://127.0.0.1:{sandbox._envd.port}", spec)
        return sandbox

    async def discard(self) -> None:
        await self._sandbox.stop()


class _IsolatedDriver:
    """envd on the host's loopback in its own namespaces: no slot, no limits."""

    starts_templates = False

    def __init__(self, cache_dir: Path | None, bundle_dir: Path | None) -> None:
        self._cache_dir = cache_dir
        self._bundle_dir = bundle_dir

    async def setup(self) -> None:
        await asyncio.to_thread(ensure_bundle, self._bundle_dir)

    async def start(self, spec: SandboxSpec, layers: list[Path]) -> _Sandbox:
        from hearth.node.runtime.container.sandbox import init_envd
        from hearth.node.runtime.isolated import IsolatedEnvd

        if spec.egress != UNRESTRICTED:
            raise EgressNotSupported(ISOLATED_EGRESS)
        envd = IsolatedEnvd(layers, cache_dir=self._cache_dir, bundle_dir=self._bundle_dir)
        await asyncio.to_thread(envd.start)
        sandbox = _IsolatedSandbox(envd)
        try:
            # envd has started nothing yet: its group will hold all the sandbox runs.
            if _freezer.available():
                freezer = _freezer.Freezer(spec.sandbox_id)
                sandbox._freezer = freezer
                assert envd.pid is not None, "envd runs: started above"
                await asyncio.to_thread(freezer.create, envd.pid)
            await init_envd(f"http://127.0.0.1:{envd.port}", spec)
        except BaseException:
            await sandbox.stop()
            raise
        return sandbox

    async def reconcile(self) -> tuple[dict[str, _Sandbox], list[str]]:
        # An isolated envd dies with the node process: nothing to adopt.
        return {}, []

    async def reconcile_paused(self) -> dict[str, _Paused]:
        return {}

    async def capture(
        self, held: _Sandbox | _Paused, artifact: Artifact, memory: bool, layers: LayerStore
    ) -> Artifact:
        raise PauseNotSupported(
            "the isolated runtime keeps no files of its own to snapshot: use the container"
            " runtime (hearth serve --runtime container)"
        )

    def has_saved(self, name: str) -> bool:
        return False

    async def forget_saved(self, names: list[str]) -> None:
        return None

    async def warm(
        self,
        artifact: Artifact,
        layers: list[Path],
        cpu_count: int,
        memory_mb: int,
        disk_mb: int | None = None,
    ) -> None:
        return None

    async def detach(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None


def _available_mb() -> int:
    """MemAvailable of the host, in MiB."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 1 << 30  # unknown: never under pressure


def _default_reserve_mb() -> int:
    """5% of the host's memory, at least 256 MiB."""
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])  # MemTotal comes first
    return max(256, total_kib // 1024 // 20)


def build_builtin(name: str, log: BuildLog | None = None) -> Artifact:
    """Build (or find cached) the built-in template `name` in a node of its own, with
    progress on the console: for commands and benchmarks that run before a server."""

    async def build() -> Artifact:
        # The isolated runtime adopts nothing: a `hearth serve` running on this data
        # directory keeps its sandboxes (a container node here would adopt them, then
        # stop them on leaving). Build steps run in containers all the same.
        async with LocalNode(settings().data_dir / "node", runtime="isolated") as node:
            return await node.builtin(name, log)

    return asyncio.run(build())
