"""Hearth's settings: the one place that reads environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# The warm pool's size per template (see `Settings.pool_sizes`): a plain create of
# `base` and of the code interpreter finds a sandbox already running.
DEFAULT_POOL_SIZES = {"base": 2, "code-interpreter-v1": 1}
# Sandbox logs kept per sandbox, and how long a killed sandbox's are kept (E2B keeps
# a sandbox's logs 7 days).
DEFAULT_SANDBOX_LOG_MAX_BYTES = 8 << 20
DEFAULT_SANDBOX_LOG_RETENTION = 7 * 24 * 3600
# How long sandboxes' sampled metrics are kept, in hours.
DEFAULT_METRICS_RETENTION_HOURS = 24.0


@dataclass(frozen=True)
class Settings:
    """Values every part of Hearth may need, read once from the environment."""

    # Built artefacts that are expensive to make and safe to share between runs: root
    # filesystems, the envd bundle when there is no source checkout to build it in.
    cache_dir: Path
    # State that must survive restarts: the SQLite database by default.
    data_dir: Path
    # SQLAlchemy URL of the store: SQLite (default, in data_dir) or PostgreSQL.
    database_url: str
    # Which runtime runs sandboxes: "auto" (microvm where the host has hardware
    # virtualization, else container), "microvm", "container" or "isolated".
    runtime: str = "auto"
    # Template id -> how many of its sandboxes `hearth serve` keeps started ahead of the
    # creates (the container runtime's warm pool). HEARTH_POOL_SIZE: "0" disables it,
    # "3" sets every template's, "base=4,code-interpreter-v1=0" sets some templates'
    # (the others keep their default).
    pool_sizes: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_POOL_SIZES))
    # HOST:PORT of a registry mirror tried first for Docker Hub images, as Docker's
    # registry mirrors are (plain HTTP allowed on loopback). None: Docker Hub only.
    registry_mirror: str | None = None
    # CA certificates that template build steps trust (pip, curl, git, node): the
    # host's, so a build works behind the same TLS-inspecting proxy as the host.
    build_ca_bundle: Path | None = None
    # Template builds that run at once (HEARTH_BUILD_CONCURRENCY); the others wait.
    build_concurrency: int = 2
    # Snapshots a team may keep (HEARTH_MAX_SNAPSHOTS); past it a snapshot is a 429.
    max_snapshots: int = 100
    # The certificate chain and key `hearth serve` presents to TLS clients
    # (HEARTH_TLS_CERT, HEARTH_TLS_KEY; PEM; no key: it is in the certificate's file).
    # No certificate: a local CA's, made under the data directory.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # The DNS servers sandboxes are given, and that the egress proxy resolves their
    # allowed domains with (HEARTH_SANDBOX_DNS, comma-separated IPv4 addresses). Empty:
    # the host's own (/etc/resolv.conf), unless that is a loopback stub.
    sandbox_dns: list[str] = field(default_factory=list)
    # The bearer token `GET /metrics` asks for (HEARTH_METRICS_TOKEN); None: none.
    metrics_token: str | None = None
    # How long sandboxes' sampled metrics are kept, in hours
    # (HEARTH_METRICS_RETENTION_HOURS; older samples are deleted as new ones come).
    metrics_retention_hours: float = DEFAULT_METRICS_RETENTION_HOURS
    # Bytes of logs kept per sandbox, the oldest lines going first
    # (HEARTH_SANDBOX_LOG_MAX_BYTES); seconds a killed sandbox's logs are kept after
    # their last line (HEARTH_SANDBOX_LOG_RETENTION).
    sandbox_log_max_bytes: int = DEFAULT_SANDBOX_LOG_MAX_BYTES
    sandbox_log_retention: int = DEFAULT_SANDBOX_LOG_RETENTION
    # Where traces go: the OTLP/HTTP URL of a collector's traces, from the standard
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces.
    # None (neither set, OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none): no traces.
    otlp_traces_endpoint: str | None = None
    # The service.name of its spans (OTEL_SERVICE_NAME).
    otel_service_name: str = "hearth"
    # Container sandboxes get their envd forked by the node's pre-imported envd zygote
    # into their namespaces, under a minimal init, instead of starting envd as their
    # init (HEARTH_ENVD_ZYGOTE=1; off by default).
    envd_zygote: bool = False


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read Hearth's settings from `environ` (the process environment by default)."""
    env = os.environ if environ is None else environ
    cache_dir = env.get("HEARTH_CACHE_DIR") or str(Path.home() / ".cache" / "hearth")
    data_dir = Path(env.get("HEARTH_DATA_DIR") or "/var/lib/hearth").expanduser()
    database_url = env.get("HEARTH_DATABASE_URL") or f"sqlite+aiosqlite:///{data_dir}/hearth.db"
    return Settings(
        cache_dir=Path(cache_dir).expanduser(),
        data_dir=data_dir,
        database_url=database_url,
        runtime=(env.get("HEARTH_RUNTIME") or "auto").strip().lower(),
        pool_sizes=_pool_sizes(env.get("HEARTH_POOL_SIZE") or ""),
        registry_mirror=(env.get("HEARTH_REGISTRY_MIRROR") or "").strip() or None,
        build_ca_bundle=_ca_bundle(env.get("HEARTH_BUILD_CA_BUNDLE")),
        build_concurrency=_positive(env, "HEARTH_BUILD_CONCURRENCY", 2),
        max_snapshots=_positive(env, "HEARTH_MAX_SNAPSHOTS", 100),
        tls_cert=_path(env.get("HEARTH_TLS_CERT")),
        tls_key=_path(env.get("HEARTH_TLS_KEY")),
        sandbox_dns=_addresses(env, "HEARTH_SANDBOX_DNS"),
        metrics_token=(env.get("HEARTH_METRICS_TOKEN") or "").strip() or None,
        metrics_retention_hours=_hours(
            env, "HEARTH_METRICS_RETENTION_HOURS", DEFAULT_METRICS_RETENTION_HOURS
        ),
        sandbox_log_max_bytes=_positive(
            env, "HEARTH_SANDBOX_LOG_MAX_BYTES", DEFAULT_SANDBOX_LOG_MAX_BYTES
        ),
        sandbox_log_retention=_positive(
            env, "HEARTH_SANDBOX_LOG_RETENTION", DEFAULT_SANDBOX_LOG_RETENTION
        ),
        otlp_traces_endpoint=_traces_endpoint(env),
        otel_service_name=(env.get("OTEL_SERVICE_NAME") or "").strip() or "hearth",
        envd_zygote=_flag(env, "HEARTH_ENVD_ZYGOTE"),
    )


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = (env.get(name) or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}: {value!r} is neither on (1, true) nor off (0, false)")


def _traces_endpoint(env: Mapping[str, str]) -> str | None:
    """The traces URL as the OpenTelemetry specification derives it for OTLP/HTTP."""
    disabled = (env.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true"
    if disabled or (env.get("OTEL_TRACES_EXPORTER") or "").strip().lower() == "none":
        return None
    if traces := (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or "").strip():
        return traces
    if base := (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip():
        return base.removesuffix("/") + "/v1/traces"
    return None


def _addresses(env: Mapping[str, str], name: str) -> list[str]:
    import ipaddress

    found = [part.strip() for part in (env.get(name) or "").split(",") if part.strip()]
    for part in found:
        try:
            ipaddress.IPv4Address(part)
        except ValueError:
            raise ValueError(f"{name}: {part!r} is not an IPv4 address") from None
    return found


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    value = (env.get(name) or "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name}: {value!r} is not a positive number")
    return number


def _hours(env: Mapping[str, str], name: str, default: float) -> float:
    value = (env.get(name) or "").strip()
    if not value:
        return default
    try:
        hours = float(value)
    except ValueError:
        hours = 0.0
    if not hours > 0 or hours == float("inf"):
        raise ValueError(f"{name}: {value!r} is not a positive number of hours")
    return hours


def _path(value: str | None) -> Path | None:
    return Path(value.strip()).expanduser() if value and value.strip() else None


def _ca_bundle(value: str | None) -> Path | None:
    if value is not None:
        return Path(value) if value.strip() else None
    host = Path("/etc/ssl/certs/ca-certificates.crt")
    return host if host.is_file() else None


def _pool_sizes(value: str) -> dict[str, int]:
    sizes = dict(DEFAULT_POOL_SIZES)
    for part in filter(None, (p.strip() for p in value.split(","))):
        template, _, count = part.rpartition("=")
        try:
            size = int(count)
        except ValueError:
            size = -1
        if size < 0:
            raise ValueError(
                f"HEARTH_POOL_SIZE: {part!r} is neither a count nor TEMPLATE=COUNT"
                " (e.g. 0, or base=4,code-interpreter-v1=1)"
            )
        if template:
            sizes[template.strip()] = size
        else:
            sizes = dict.fromkeys(sizes, size)
    return sizes
