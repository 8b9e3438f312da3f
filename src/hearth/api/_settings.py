"""What the API is told at start (by `hearth serve`); it reads no environment itself."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from hearth.api._sampler import RETENTION, SAMPLE_INTERVAL
from hearth.config import DEFAULT_SANDBOX_LOG_MAX_BYTES, DEFAULT_SANDBOX_LOG_RETENTION

# The envd feature level Hearth's envd implements (spec §3.7); the SDK gates on it.
ENVD_VERSION = "0.6.13"
LOG_MAX_AGE = 7 * 24 * 3600  # infra's window of a logs query: the last 7 days


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
    # Sandbox metrics: seconds between two samples of each running sandbox, and how long
    # samples are kept.
    metrics_interval: float = Field(SAMPLE_INTERVAL, gt=0)
    metrics_retention: float = Field(RETENTION, gt=0)
    # Sandbox logs kept on this server (under `sandbox-logs/` of data_dir): at most this
    # many bytes per sandbox (the oldest lines go first), lines no older than
    # `sandbox_log_max_age` seconds (E2B's 7 days), and a killed sandbox's deleted
    # `sandbox_log_retention` seconds after its last line.
    sandbox_log_max_bytes: int = Field(DEFAULT_SANDBOX_LOG_MAX_BYTES, ge=4096)
    sandbox_log_max_age: float = Field(LOG_MAX_AGE, gt=0)
    sandbox_log_retention: float = Field(DEFAULT_SANDBOX_LOG_RETENTION, gt=0)
    # The bearer token `GET /metrics` asks for; None: Prometheus scrapes it freely.
    metrics_token: str | None = None
