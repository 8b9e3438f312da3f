"""The sandbox bodies of E2B's OpenAPI spec, with its exact field names (spec §2.3, §2.4).

Fields are named as they travel (`templateID`, `envVars`, and the one snake_case
`allow_internet_access`) and the models as E2B's spec names them, so that Hearth's
`/openapi.json` reads as E2B's; unknown request fields are ignored, as the Go server
does. Every field the Python SDK's parser requires is required here too, and what a
request may carry is bounded (`hearth.api._limits`).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hearth.api._limits import EnvVars, Metadata, RequestBody, Seconds
from hearth.store import Sandbox as SandboxRecord
from hearth.store import SandboxMetric as StoredMetric
from hearth.store import SandboxState


class SandboxAutoResumeConfig(RequestBody):
    enabled: bool = False


class SandboxVolumeMount(RequestBody):
    name: str
    path: str


# A host name or address, optionally with a port or the `${PORT}` placeholder.
_MASK = r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?(?::(?:[0-9]{1,5}|\$\{PORT\}))?$"


class SandboxNetworkConfig(RequestBody):
    model_config = ConfigDict(extra="allow")

    allowPublicTraffic: bool | None = None
    allowOut: list[str] | None = None
    denyOut: list[str] | None = None
    maskRequestHost: str | None = Field(None, pattern=_MASK)
    # {host: [{"transform": {"headers": {...}}}]}, checked by `policy.Egress`
    rules: dict[str, Any] | None = None
    egressProxy: dict[str, Any] | None = None
    dnsServers: list[str] | None = None


class SandboxNetworkUpdateConfig(RequestBody):
    """`PUT /sandboxes/{id}/network` (E2B's `SandboxNetworkUpdateConfig`)."""

    allowOut: list[str] | None = None
    denyOut: list[str] | None = None
    rules: dict[str, Any] | None = None
    allow_internet_access: bool | None = None
    egressProxy: dict[str, Any] | None = None
    dnsServers: list[str] | None = None


class NewSandboxV2(RequestBody):
    """`POST /v2/sandboxes`: always secured; the timeout defaults to 300 s."""

    templateID: str = Field(min_length=1, examples=["base"])
    timeout: Seconds | None = None
    autoPause: bool | None = None
    autoPauseMemory: bool | None = None
    autoResume: SandboxAutoResumeConfig | None = None
    allow_internet_access: bool | None = None
    network: SandboxNetworkConfig | None = None
    metadata: Metadata | None = None
    envVars: EnvVars | None = None
    mcp: dict[str, Any] | None = None
    volumeMounts: list[SandboxVolumeMount] | None = None


class NewSandbox(NewSandboxV2):
    """`POST /sandboxes` (v1): secured only when asked; the timeout defaults to 15 s."""

    secure: bool | None = None


class ConnectSandbox(RequestBody):
    timeout: Seconds
    memory: bool | None = None


class ConnectSandboxV2(RequestBody):
    timeout: Seconds = 300
    memory: bool | None = None


class SandboxPauseRequest(RequestBody):
    memory: bool = True  # False: keep only the filesystem
    requireHealthyGuest: bool | None = None


class ResumedSandbox(RequestBody):
    """The deprecated `POST /sandboxes/{id}/resume`."""

    timeout: Seconds = 15
    autoPause: bool | None = None
    memory: bool | None = None


class TimeoutRequest(RequestBody):
    timeout: Seconds


class RefreshRequest(RequestBody):
    duration: int = Field(15, ge=0, le=3600)


class Sandbox(BaseModel):
    """The answer of create and connect."""

    sandboxID: str
    templateID: str
    alias: str | None
    clientID: str
    envdVersion: str
    envdAccessToken: str | None
    trafficAccessToken: str | None
    domain: str | None

    @classmethod
    def of(cls, sandbox: SandboxRecord, domain: str | None) -> Sandbox:
        return cls(
            sandboxID=sandbox.sandbox_id,
            templateID=sandbox.template_id,
            alias=sandbox.alias,
            clientID=sandbox.client_id,
            envdVersion=sandbox.envd_version,
            envdAccessToken=sandbox.envd_access_token,
            trafficAccessToken=sandbox.traffic_access_token,
            domain=domain,
        )


class SandboxLifecycle(BaseModel):
    autoResume: bool
    onTimeout: Literal["kill", "pause"]


class ListedSandbox(BaseModel):
    templateID: str
    alias: str | None
    sandboxID: str
    clientID: str
    startedAt: datetime
    endAt: datetime
    cpuCount: int
    memoryMB: int
    diskSizeMB: int
    metadata: dict[str, str]
    state: Literal["running", "paused"]
    envdVersion: str
    volumeMounts: list[SandboxVolumeMount]

    @classmethod
    def of(cls, sandbox: SandboxRecord) -> ListedSandbox:
        return cls(**_listed_fields(sandbox))


class SandboxDetail(ListedSandbox):
    """Served without its None fields (the parser crashes on some nulls): every field
    that may be None may be absent."""

    alias: str | None = None
    envdAccessToken: str | None = None
    allowInternetAccess: bool | None = None
    domain: str | None = None
    network: SandboxNetworkConfig | None = None
    lifecycle: SandboxLifecycle
    pauseMode: Literal["full", "filesystem"] | None = None  # what a paused one's pause kept

    @classmethod
    def of_detail(cls, sandbox: SandboxRecord, domain: str | None) -> SandboxDetail:
        return cls(
            **_listed_fields(sandbox),
            envdAccessToken=sandbox.envd_access_token,
            allowInternetAccess=sandbox.allow_internet,
            domain=domain,
            network=sandbox.network,
            lifecycle=SandboxLifecycle(
                autoResume=sandbox.auto_resume,
                onTimeout="pause" if sandbox.auto_pause else "kill",
            ),
            pauseMode=_pause_mode(sandbox),
        )


def _pause_mode(sandbox: SandboxRecord) -> Literal["full", "filesystem"] | None:
    if sandbox.state is not SandboxState.PAUSED or sandbox.pause_memory is None:
        return None
    return "full" if sandbox.pause_memory else "filesystem"


def _listed_fields(sandbox: SandboxRecord) -> dict[str, Any]:
    return {
        "templateID": sandbox.template_id,
        "alias": sandbox.alias,
        "sandboxID": sandbox.sandbox_id,
        "clientID": sandbox.client_id,
        "startedAt": sandbox.started_at,
        "endAt": sandbox.end_at,
        "cpuCount": sandbox.cpu_count,
        "memoryMB": sandbox.memory_mb,
        "diskSizeMB": sandbox.disk_size_mb,
        "metadata": sandbox.metadata,
        "state": sandbox.state.value,
        "envdVersion": sandbox.envd_version,
        "volumeMounts": [],
    }


class SandboxMetric(BaseModel):
    """One sample of what a sandbox used of its own limits (bytes; `cpuUsedPct` of all
    its vCPUs)."""

    timestamp: datetime
    timestampUnix: int
    cpuCount: int
    cpuUsedPct: float
    memUsed: int
    memTotal: int
    memCache: int
    diskUsed: int
    diskTotal: int

    @classmethod
    def of(cls, metric: StoredMetric) -> SandboxMetric:
        return cls(
            timestamp=metric.timestamp,
            timestampUnix=math.floor(metric.timestamp.timestamp()),
            cpuCount=metric.cpu_count,
            cpuUsedPct=metric.cpu_used_pct,
            memUsed=metric.mem_used,
            memTotal=metric.mem_total,
            memCache=metric.mem_cache,
            diskUsed=metric.disk_used,
            diskTotal=metric.disk_total,
        )


class SandboxesWithMetrics(BaseModel):
    """The latest sample of each asked-for sandbox that has one, by id."""

    sandboxes: dict[str, SandboxMetric]


class SandboxLog(BaseModel):
    timestamp: datetime
    line: str


LogLevel = Literal["debug", "info", "warn", "error"]
LogsDirection = Literal["forward", "backward"]


class SandboxLogEntry(BaseModel):
    timestamp: datetime
    message: str
    level: LogLevel
    fields: dict[str, str]


class SandboxLogs(BaseModel):
    logs: list[SandboxLog]
    logEntries: list[SandboxLogEntry]


class SandboxLogsV2Response(BaseModel):
    logs: list[SandboxLogEntry]
