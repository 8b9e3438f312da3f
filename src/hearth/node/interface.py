"""What the api and the proxy may ask of a node: the contract between the rooms.

The api never sees a runtime driver; it asks a `Node` to run, stop and locate sandboxes.
In `hearth serve` the node is in-process; in a cluster the same calls go over node RPC.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hearth.node.network.policy import UNRESTRICTED, Egress
from hearth.template.artifact import Artifact
from hearth.template.recipe import Recipe


@dataclass(frozen=True)
class SandboxSpec:
    sandbox_id: str  # 20 characters of [a-z0-9]
    template_id: str
    cpu_count: int
    memory_mb: int
    env_vars: dict[str, str] = field(default_factory=dict)
    envd_access_token: str | None = None  # set on envd through /init; None: no token
    egress: Egress = UNRESTRICTED  # what it may reach (E2B's allowOut, denyOut, rules)
    metadata: dict[str, str] = field(default_factory=dict)
    # What the sandbox starts from (the api resolves the template's ready build). None:
    # the built-in template named by `template_id` (busybox, debian, base, ...).
    artifact: Artifact | None = None
    # Its disk, in MiB: what its files may grow by over its template's (E2B's
    # diskSizeMB; a create's, from the template's build). None: the node's default.
    disk_mb: int | None = None


@dataclass(frozen=True)
class BuildRequest:
    """One build of a template: its recipe, and what the recipe refers to, resolved by
    the caller (the parent template's artifact, the uploaded COPY files)."""

    template_id: str
    build_id: str
    team_id: str | None  # None: a built-in template (its layers are shared by all teams)
    recipe: Recipe
    parent: Artifact | None = None  # the artifact of `recipe.base.template`
    files: Mapping[str, Path] = field(default_factory=dict)  # filesHash -> tar on this host


# level ("debug", "info", "warn", "error"), message, step ("base", "1".., "finalize")
BuildLog = Callable[[str, str, str | None], None]


class BuildFailed(RuntimeError):
    """A build failed at `step` ("base", "N" for the Nth step, "finalize"); the message
    says why and, where it can, what to do."""

    def __init__(self, message: str, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class SandboxAddress:
    """Where the host reaches a sandbox's ports: `host` is the sandbox's slot address
    (or 127.0.0.1 for runtimes that share the host's network), `port_map` overrides
    individual ports (a runtime on the host's loopback maps envd's 49983 elsewhere)."""

    host: str
    port_map: dict[int, int] = field(default_factory=dict)

    def port(self, sandbox_port: int) -> int:
        return self.port_map.get(sandbox_port, sandbox_port)


@dataclass(frozen=True)
class SandboxUsage:
    """One sample of what a sandbox uses of its own limits (bytes; `cpu_used_pct` is
    of all its vCPUs: 100 is every one of them busy)."""

    timestamp: float  # seconds since the epoch
    cpu_count: int
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    mem_cache: int
    disk_used: int
    disk_total: int


class SandboxNotFound(LookupError):
    pass


class EgressNotSupported(RuntimeError):
    """The runtime cannot enforce a network policy (the message says what to use)."""


class PauseNotSupported(RuntimeError):
    """The runtime cannot pause this sandbox (the message says why and what to use)."""


class Node(Protocol):
    async def create(self, spec: SandboxSpec) -> SandboxAddress:
        """Start a sandbox; returns once envd answers /health and /init was applied and
        its template's start command is ready."""

    async def build(self, request: BuildRequest, log: BuildLog) -> Artifact:
        """Build a template's recipe into layers on this node; BuildFailed with the
        failing step. Cancelling the call cancels the build and leaves nothing behind."""

    def has_artifact(self, artifact: Artifact) -> bool:
        """Whether this node holds every layer of `artifact` (its cache may have been
        wiped while the store kept the build)."""

    async def forget_artifacts(self, keep: list[Artifact], drop: list[Artifact]) -> None:
        """Free the layers (and snapshots) of `drop` that no artifact of `keep` uses and
        no sandbox has mounted (a template was deleted)."""

    async def snapshot(self, sandbox_id: str, *, memory: bool = True) -> Artifact:
        """The sandbox's state now as an artifact that creates start from: its files
        (a layer over its template's, or a microVM's disk) and, with `memory` on a
        runtime that can keep it, its memory and running processes (`artifact.memory`
        says whether it was kept). A running sandbox is paused only for the capture
        and goes on as it was; a paused one is captured as it lies. The node keeps what
        the artifact names until `forget_artifacts` drops it and no sandbox started
        from it remains. SandboxNotFound if the node holds no such sandbox."""

    async def kill(self, sandbox_id: str) -> bool:
        """Stop a sandbox, running or paused, and release everything it holds (its
        paused state on disk included); False if unknown."""

    async def pause(self, sandbox_id: str, *, memory: bool = True) -> bool:
        """Pause a running sandbox. Returns True when its memory was kept (a resume
        continues its processes), False for a filesystem-only pause (a resume boots it
        again over the same files). SandboxNotFound if it is not running here."""

    async def update_network(self, sandbox_id: str, egress: Egress) -> None:
        """Replace a running sandbox's egress policy at once, cutting the connections it
        now forbids; a paused one gets its policy from its resume's spec. Raises
        SandboxNotFound, or EgressNotSupported where the runtime cannot enforce one."""
        ...

    async def resume(self, spec: SandboxSpec) -> SandboxAddress:
        """Resume the paused sandbox `spec.sandbox_id` (same id, same envd access
        token); returns once envd answers. SandboxNotFound if it is not paused here."""

    async def relieve_memory(self) -> list[str]:
        """If the host is short of memory, turn memory pauses that hold host memory into
        filesystem-only ones; returns the ids so changed."""

    async def paused(self) -> dict[str, bool]:
        """The sandboxes paused on this node, each with whether its memory was kept
        (for reconcile: a memory pause may become filesystem-only across a restart)."""

    def address(self, sandbox_id: str) -> SandboxAddress | None:
        """Where a running sandbox is reached, or None."""

    async def usage(self, sandbox_ids: Collection[str] | None = None) -> dict[str, SandboxUsage]:
        """A sample of what each running sandbox (or each of `sandbox_ids` that runs)
        uses now, by id; paused ones, and ones that stop meanwhile, are left out."""

    async def running(self) -> list[str]:
        """The ids of the sandboxes this node runs (for reconcile)."""

    async def close(self) -> None:
        """Stop every sandbox (server shutdown)."""
