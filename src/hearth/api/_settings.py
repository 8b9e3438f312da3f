"""What the API is told at start (by `hearth serve`); it reads no environment itself."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

# The envd feature level Hearth's envd implements (spec §3.7); the SDK gates on it.
ENVD_VERSION = "0.6.13"


class ApiSettings(BaseModel):
    # The base domain of sandbox hosts (`{port}-{id}.{domain}`), returned as `domain`
    # by create and connect; None lets the SDK use its E2B_DOMAIN.
    domain: str | None = None
    node_id: str = "local"
    envd_version: str = ENVD_VERSION
    max_timeout: int = Field(24 * 3600, ge=1)  # seconds a sandbox may be given at a time
    # What each team may hold and do unless its own limits say otherwise (`hearth teams
    # set`); 0: no limit. Running sandboxes; their vCPUs and MiB; creates per second.
    max_concurrent: int = Field(100, ge=0)
    max_vcpus: int = Field(0, ge=0)
    max_memory_mb: int = Field(0, ge=0)
    max_starts_per_second: int = Field(0, ge=0)
    # Snapshots (their templates) a team may keep; 0: no limit.
    max_snapshots: int = Field(100, ge=0)
    # Resources of a sandbox whose template names none.
    cpu_count: int = Field(2, ge=1)
    memory_mb: int = Field(512, ge=128)
    disk_size_mb: int = Field(2048, ge=0)
    # How often the reaper looks for sandboxes past their end.
    reap_interval: float = Field(1.0, gt=0)
    # Where state that outlives a restart is kept: the files uploaded for template
    # builds (under `template-files/`). None: uploads are refused.
    data_dir: Path | None = None
    # Template builds that run on the node at once; the others wait.
    build_concurrency: int = Field(2, ge=1)
    # The bearer token `GET /metrics` asks for; None: Prometheus scrapes it freely.
    metrics_token: str | None = None
