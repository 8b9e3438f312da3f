"""The plain records the store hands out: callers never see a table row or a session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class SandboxState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    KILLED = "killed"  # final: the row stays for logs and history, lists skip it


@dataclass(frozen=True, slots=True)
class TeamLimits:
    """What one team may hold at once and how fast it may start sandboxes. None: the
    server's default; 0: no limit."""

    concurrent_sandboxes: int | None = None
    starts_per_second: int | None = None
    vcpus: int | None = None  # of its running sandboxes together
    memory_mb: int | None = None  # of its running sandboxes together
    max_timeout: int | None = None  # seconds a sandbox may be given at a time

    def to_json(self) -> dict[str, int]:
        return {k: v for k in self.__slots__ if (v := getattr(self, k)) is not None}


@dataclass(frozen=True, slots=True)
class Team:
    id: str
    name: str
    created_at: datetime
    limits: TeamLimits = TeamLimits()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A team's API key as it may be shown: never the key, only its ends for recognition."""

    id: str
    team_id: str
    name: str
    prefix: str  # the key's first characters ("e2b_" and two more)
    suffix: str  # its last four
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def masked(self) -> str:
        return f"{self.prefix}…{self.suffix}"


@dataclass(frozen=True, slots=True)
class Sandbox:
    sandbox_id: str
    team_id: str
    template_id: str
    alias: str | None
    client_id: str
    state: SandboxState
    metadata: dict[str, str]
    cpu_count: int
    memory_mb: int
    disk_size_mb: int
    envd_version: str
    envd_access_token: str | None
    traffic_access_token: str | None
    allow_internet: bool | None
    auto_pause: bool
    auto_resume: bool
    network: dict[str, Any] | None  # the create-time SandboxNetworkConfig, echoed by GET
    started_at: datetime
    end_at: datetime
    node_id: str | None
    runtime: str | None
    killed_at: datetime | None
    auto_pause_memory: bool = True  # False: the auto-pause keeps the filesystem only
    pause_memory: bool | None = None  # what the latest pause kept; None: never paused
    timeout: int | None = None  # the create-time timeout in seconds (auto-resume's)
    env_vars: dict[str, str] | None = None  # the create-time envVars (a resume's /init)


@dataclass(frozen=True, slots=True)
class Template:
    template_id: str
    team_id: str | None  # None: a template of the installation itself, always public
    aliases: tuple[str, ...]
    cpu_count: int
    memory_mb: int
    disk_size_mb: int
    envd_version: str
    build_id: str | None
    public: bool
    created_at: datetime
    updated_at: datetime
    build_count: int
    spawn_count: int
    last_spawned_at: datetime | None
    snapshot_of: str | None = None  # a snapshot's: the sandbox it was taken of


@dataclass(frozen=True, slots=True)
class Build:
    """One build of a template: waiting, then building, then ready or error."""

    build_id: str
    template_id: str
    team_id: str | None
    status: str  # "waiting" | "building" | "ready" | "error"
    recipe: dict[str, Any] | None  # what to build
    artifact: dict[str, Any] | None  # what the build made (its layers, its snapshot)
    reason: dict[str, Any] | None  # why it failed: {"message", "step"?}
    cpu_count: int
    memory_mb: int
    disk_size_mb: int
    envd_version: str | None
    tags: tuple[str, ...]  # assigned to the build when it becomes ready
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class BuildLogEntry:
    seq: int  # the entry's position in its build's log, from 0
    timestamp: datetime
    level: str  # "debug" | "info" | "warn" | "error"
    message: str
    step: str | None


@dataclass(frozen=True, slots=True)
class TemplateTag:
    template_id: str
    tag: str
    build_id: str
    created_at: datetime  # when the tag was (last) assigned


@dataclass(frozen=True, slots=True)
class SandboxEvent:
    id: int
    sandbox_id: str
    team_id: str
    type: str
    timestamp: datetime
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SandboxMetric:
    """One sample of what a sandbox used of its own limits (bytes; `cpu_used_pct` of
    all its vCPUs)."""

    sandbox_id: str
    timestamp: datetime
    cpu_count: int
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    mem_cache: int
    disk_used: int
    disk_total: int


# The sandbox events (types) that start its running and that end it; the api records them.
STARTED = ("sandbox.created", "sandbox.resumed")
STOPPED = ("sandbox.paused", "sandbox.killed")
CREATED = STARTED[0]


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """A sandbox starting to run (created, resumed) or ceasing to (paused, killed), for
    a team's series of running sandboxes."""

    sandbox_id: str
    type: str
    timestamp: datetime

    @property
    def starts(self) -> bool:
        """Whether the sandbox runs from this event on."""
        return self.type in STARTED


class StoreError(Exception):
    """Base of the errors the store raises on purpose."""


class Conflict(StoreError):
    """The write would break a uniqueness or ownership rule (the api's 409 or 400)."""


class NotFound(StoreError, LookupError):
    """The build the write names does not exist (any more)."""


class InvalidCursor(StoreError, ValueError):
    """A `next_token` this store did not make, or made for the other order."""
