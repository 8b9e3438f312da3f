"""The node of a single host: runs sandboxes here and keeps track of them in memory.

`LocalNode` implements the `Node` protocol with one of two runtimes:

- `"container"` (the default): each sandbox is an OCI container with its own network
  slot, cgroup limits, seccomp and user namespace (`runtime/container`). Its state lives
  under `data_dir`, so a node that restarts adopts the sandboxes still running
  (`reconcile()`, run by `start()`) and removes whatever of the others is left.
- `"isolated"`: envd in user, mount, pid and UTS namespaces on the host's loopback
  (`runtime/isolated.IsolatedEnvd`), for hosts where containers cannot run. No network
  slot, no limits, and sandboxes end with the node process.

The API is async; everything that blocks runs in threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol, Self, get_args

from hearth.node.disk.rootfs import RootKind, ensure_root
from hearth.node.guest.envd_bundle import ensure_bundle
from hearth.node.interface import SandboxAddress, SandboxNotFound, SandboxSpec
from hearth.node.network import NetworkPool
from hearth.node.network.slots import DEFAULT_POOL

log = logging.getLogger(__name__)

RuntimeKind = Literal["container", "isolated"]
ENVD_PORT = 49983
# Template ids that name a root kind ("busybox", "debian", ...) run on that root; others
# on the mapping given to LocalNode, else on `default_root`. (Until templates are built.)
ROOT_KINDS = frozenset(get_args(RootKind))


class _Sandbox(Protocol):
    @property
    def address(self) -> SandboxAddress: ...

    async def stop(self) -> None: ...


class _Runtime(Protocol):
    """What LocalNode needs of a runtime (to move to runtime/base.py with a second user)."""

    async def setup(self) -> None: ...

    async def start(self, spec: SandboxSpec, kind: RootKind, root: Path) -> _Sandbox: ...

    async def reconcile(self) -> tuple[dict[str, _Sandbox], list[str]]: ...

    async def shutdown(self) -> None: ...


class LocalNode:
    """Runs sandboxes on this host. Use `async with LocalNode(...)`, or `start()` then
    `close()`; `create()` starts the node itself if need be."""

    def __init__(
        self,
        data_dir: Path,
        *,
        runtime: RuntimeKind = "container",
        templates: Mapping[str, RootKind] | None = None,
        default_root: RootKind = "debian",
        cache_dir: Path | None = None,
        bundle_dir: Path | None = None,
        oci_runtime: str | None = None,
        network_pool: str = DEFAULT_POOL,
        blocked_networks: tuple[str, ...] | None = None,
        pids_limit: int = 4096,
        start_timeout: float = 60.0,
        no_new_privileges: bool = False,
        dns_servers: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.kind = runtime
        self._templates = dict(templates or {})
        self._default_root = default_root
        self._cache_dir = cache_dir
        self._bundle_dir = bundle_dir
        self._options = {
            "oci_runtime": oci_runtime,
            "network_pool": network_pool,
            "blocked_networks": blocked_networks,
            "pids_limit": pids_limit,
            "start_timeout": start_timeout,
            "no_new_privileges": no_new_privileges,
            "dns_servers": dns_servers,
        }
        self.runtime: _Runtime | None = None
        self._sandboxes: dict[str, _Sandbox] = {}
        self._starting: set[str] = set()
        self._start_lock = asyncio.Lock()
        self._closed = False

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
            if self.kind == "container":
                runtime: _Runtime = _ContainerDriver(
                    self.data_dir, self._bundle_dir, **self._options
                )
            elif self.kind == "isolated":
                runtime = _IsolatedDriver(self._cache_dir, self._bundle_dir)
            else:
                raise ValueError(f"unknown runtime {self.kind!r} (container or isolated)")
            await runtime.setup()
            self.runtime = runtime
            return await self.reconcile()

    async def reconcile(self) -> list[str]:
        """Adopt the sandboxes a previous node process left running and remove the
        leftovers of the rest. Returns a description of what was removed."""
        assert self.runtime is not None
        adopted, removed = await self.runtime.reconcile()
        for sandbox_id, sandbox in adopted.items():
            self._sandboxes.setdefault(sandbox_id, sandbox)
        if removed:
            log.info("reconcile removed: %s", ", ".join(removed))
        return removed

    async def create(self, spec: SandboxSpec) -> SandboxAddress:
        if self._closed:
            raise RuntimeError("the node is closed")
        await self.start()
        assert self.runtime is not None
        sandbox_id = spec.sandbox_id
        if sandbox_id in self._sandboxes or sandbox_id in self._starting:
            raise ValueError(f"sandbox {sandbox_id} exists")
        self._starting.add(sandbox_id)
        try:
            kind = self._root_kind(spec.template_id)
            root = await asyncio.to_thread(ensure_root, kind, self._cache_dir)
            sandbox = await self.runtime.start(spec, kind, root)
            self._sandboxes[sandbox_id] = sandbox
        finally:
            self._starting.discard(sandbox_id)
        return sandbox.address

    async def prepare(self, template_id: str) -> None:
        """Build (or find cached) what sandboxes of `template_id` start from."""
        await asyncio.to_thread(ensure_root, self._root_kind(template_id), self._cache_dir)

    async def kill(self, sandbox_id: str) -> bool:
        sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox is None:
            return False
        await sandbox.stop()
        return True

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

    def _root_kind(self, template_id: str) -> RootKind:
        if template_id in self._templates:
            return self._templates[template_id]
        if template_id in ROOT_KINDS:
            return template_id  # type: ignore[return-value]
        return self._default_root

    async def detach(self) -> None:
        """Let go of the sandboxes without stopping them, for a node process that exits
        and will be started again: its next `start()` adopts them (see `reconcile`).
        Only container sandboxes outlive the node process; isolated ones end with it."""
        self._closed = True
        self._sandboxes = {}

    async def close(self) -> None:
        """Stop every sandbox and release what the node holds on the host."""
        self._closed = True
        sandboxes, self._sandboxes = self._sandboxes, {}
        await asyncio.gather(*(s.stop() for s in sandboxes.values()), return_exceptions=True)
        if self.runtime is not None:
            await self.runtime.shutdown()


class _ContainerDriver:
    def __init__(
        self,
        data_dir: Path,
        bundle_dir: Path | None,
        *,
        oci_runtime: str | None,
        network_pool: str,
        blocked_networks: tuple[str, ...] | None,
        **options: object,
    ) -> None:
        self._data_dir = data_dir
        self._bundle_dir = bundle_dir
        self._oci_runtime = oci_runtime
        self._pool_cidr = network_pool
        self._blocked = blocked_networks
        self._options = options
        self.runtime = None

    async def setup(self) -> None:
        from hearth.node.network.rules import DEFAULT_BLOCKED
        from hearth.node.runtime.container import ContainerRuntime, detect

        def prepare() -> ContainerRuntime:
            oci = detect(self._data_dir / "oci", self._oci_runtime)
            pool = NetworkPool(
                self._data_dir / "netns",
                self._pool_cidr,
                blocked=self._blocked if self._blocked is not None else DEFAULT_BLOCKED,
            )
            runtime = ContainerRuntime(
                self._data_dir, oci, pool, ensure_bundle(self._bundle_dir), **self._options
            )
            runtime.setup()
            pool.setup()
            return runtime

        self.runtime = await asyncio.to_thread(prepare)
        log.info("container runtime: %s (%s)", self.runtime.oci.name, self.runtime.oci.binary)

    async def start(self, spec: SandboxSpec, kind: RootKind, root: Path) -> _Sandbox:
        return await self.runtime.start(spec, root)

    async def reconcile(self) -> tuple[dict[str, _Sandbox], list[str]]:
        adopted, removed = await self.runtime.reconcile()
        return {s.sandbox_id: s for s in adopted}, removed

    async def shutdown(self) -> None:
        runtime = self.runtime
        if runtime is None:
            return

        # The rules table stays (empty of slots), as forwarding does: another node
        # process on this host may still use them.
        await asyncio.to_thread(runtime.remove_cgroup_parents)


class _IsolatedSandbox:
    def __init__(self, envd: object) -> None:
        self._envd = envd
        self._lock = asyncio.Lock()

    @property
    def address(self) -> SandboxAddress:
        return SandboxAddress("127.0.0.1", {ENVD_PORT: self._envd.port})

    async def stop(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._envd.stop)


class _IsolatedDriver:
    """envd on the host's loopback in its own namespaces: no slot, no limits."""

    def __init__(self, cache_dir: Path | None, bundle_dir: Path | None) -> None:
        self._cache_dir = cache_dir
        self._bundle_dir = bundle_dir

    async def setup(self) -> None:
        await asyncio.to_thread(ensure_bundle, self._bundle_dir)

    async def start(self, spec: SandboxSpec, kind: RootKind, root: Path) -> _Sandbox:
        from hearth.node.runtime.container.sandbox import init_envd
        from hearth.node.runtime.isolated import IsolatedEnvd

        envd = IsolatedEnvd(kind, cache_dir=self._cache_dir, bundle_dir=self._bundle_dir)
        await asyncio.to_thread(envd.start)
        sandbox = _IsolatedSandbox(envd)
        try:
            await init_envd(f"http://127.0.0.1:{envd.port}", spec)
        except BaseException:
            await sandbox.stop()
            raise
        return sandbox

    async def reconcile(self) -> tuple[dict[str, _Sandbox], list[str]]:
        # An isolated envd dies with the node process: nothing to adopt.
        return {}, []

    async def shutdown(self) -> None:
        return None
