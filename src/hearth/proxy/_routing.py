"""Which way a request goes: to a sandbox's port, to the API, or back with an error.

The rules are infra's (`packages/shared/pkg/proxy/host.go`, spec §1.5): the
`E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers route on any Host (a self-hosted gateway
sits behind `E2B_SANDBOX_URL=http://host:port`), otherwise the left-most label of a
`{port}-{id}[-…].{domain}` Host does. One exception, for the listener that also serves
the API: the control plane's sandbox paths, which envd does not have, go to the API
even with the routing headers set (`_sent_to_the_api`). A request that names no sandbox
either way is `Unnamed`: the gateway looks for the sandbox it is meant for by what else
it carries, and sends the rest to the API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

ENVD_PORT = 49983
# envd's `x-internal` paths: the node reaches them directly, the public URL never does.
RESERVED_ENVD_PATHS = frozenset(
    {"/init", "/freeze", "/unfreeze", "/collapse", "/fsfreeze", "/fsthaw", "/upgrade"}
)
_SANDBOX_ID = re.compile(r"[a-z0-9]+")
# The control plane's sandbox operations (`/sandboxes/{id}/connect`, ...): no envd path.
_API_SANDBOX_PATHS = ("/sandboxes", "/v2/sandboxes")
# envd's public paths (spec §3.1, §3.4).
_ENVD_PATHS = ("/health", "/files", "/envs", "/metrics")
_ENVD_SERVICES = ("/process.Process/", "/filesystem.Filesystem/")


@dataclass(frozen=True)
class ToApi:
    pass


@dataclass(frozen=True)
class Unnamed:
    """Neither the routing headers nor the Host name a sandbox."""


@dataclass(frozen=True)
class ToSandbox:
    sandbox_id: str
    port: int


@dataclass(frozen=True)
class Refusal:
    """An answer the gateway gives itself. `plain` ones are Go's `http.Error` text;
    the others are infra's JSON bodies (HTML for browsers) with `fields` added."""

    status: int
    message: str
    plain: bool = False
    fields: dict[str, object] = field(default_factory=dict)
    title: str = ""


def classify(
    headers: dict[bytes, bytes], target: bytes, *, domains: Sequence[str], api: bool
) -> ToApi | ToSandbox | Refusal | Unnamed:
    """Route the request for `target` by the routing headers, then by Host (on a
    listener without the API, `api` False, every Host is a sandbox's). `headers` maps
    lower-cased names to values."""
    sandbox_id = headers.get(b"e2b-sandbox-id")
    port = headers.get(b"e2b-sandbox-port")
    if api and _sent_to_the_api(port, target):
        return ToApi()
    if sandbox_id is not None or port is not None:
        if sandbox_id is None or port is None:
            return Refusal(400, "missing header", plain=True)
        return _target(sandbox_id.decode("latin-1").strip(), port.decode("latin-1").strip())

    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    label = _sandbox_label(host, domains) if domains else None
    if label is None and not api:
        # A proxy-only listener treats every host as a sandbox host (infra's rule).
        label, dot, _ = host.partition(".")
        if not dot:
            return Unnamed()
    if label is None:
        return Unnamed()
    parts = label.split("-")
    if len(parts) < 2:
        return Unnamed()
    return _target(parts[1], parts[0])


def envd_path(target: bytes) -> bool:
    """Whether `target` is one of envd's paths."""
    path = _path(target)
    return path in _ENVD_PATHS or path.startswith(_ENVD_SERVICES)


def invalid_host() -> Refusal:
    return Refusal(400, "Invalid host", plain=True)


def _sent_to_the_api(port: bytes | None, target: bytes) -> bool:
    """A control-plane call that carries the sandbox's routing headers: e2b 2.7 to 2.26
    (Python) send `POST /sandboxes/{id}/connect` to the API with `E2b-Sandbox-Id` and
    `E2b-Sandbox-Port: 49983`, which at E2B's separate API host route nothing."""
    if port is None or port.strip() != str(ENVD_PORT).encode():
        return False
    path = _path(target)
    return any(path == p or path.startswith(p + "/") for p in _API_SANDBOX_PATHS)


def _path(target: bytes) -> str:
    return target.split(b"?", 1)[0].decode("latin-1")


def _sandbox_label(host: str, domains: Sequence[str]) -> str | None:
    """The left-most label of `host` when the rest is one of `domains` (compared with
    and without the port, so `--domain localhost:3000` and `--domain example.com` both
    work) and that label looks like `{port}-{id}`."""
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    for candidate in (host, bare):
        label, dot, rest = candidate.partition(".")
        if dot and "-" in label and rest in domains:
            return label
    return None


def _target(sandbox_id: str, port: str) -> ToSandbox | Refusal:
    if not port.isdigit() or not 0 < int(port) < 65536:
        return Refusal(400, "Invalid sandbox port", plain=True)
    if not _SANDBOX_ID.fullmatch(sandbox_id):
        return Refusal(400, "Invalid sandbox ID", plain=True)
    return ToSandbox(sandbox_id, int(port))


def reserved(port: int, target: bytes) -> Refusal | None:
    """The refusal for envd's internal paths, which only the node may call."""
    path = _path(target)
    if port == ENVD_PORT and path.rstrip("/") in RESERVED_ENVD_PATHS:
        return Refusal(
            404,
            "This endpoint is reserved for the E2B control plane and is not reachable"
            " through the sandbox URL",
            fields={"path": path},
            title="Reserved Endpoint",
        )
    return None


def not_found(sandbox_id: str) -> Refusal:
    """The sandbox is unknown, killed or paused (`sandbox_id` "" if only its envd access
    token was given, which no running sandbox has)."""
    return Refusal(
        502,
        "The sandbox was not found",
        fields={"sandboxId": sandbox_id},
        title="Sandbox Not Found",
    )


def port_not_open(sandbox_id: str, port: int) -> Refusal:
    return Refusal(
        502,
        "The sandbox is running but port is not open",
        fields={"sandboxId": sandbox_id, "port": port},
        title="Closed Port Error",
    )


def traffic_token_missing(sandbox_id: str) -> Refusal:
    return Refusal(
        403,
        "Sandbox is secured with traffic access token."
        " Token header 'e2b-traffic-access-token' is missing",
        fields={"sandboxId": sandbox_id},
        title="Missing Traffic Access Token",
    )


def traffic_token_invalid(sandbox_id: str) -> Refusal:
    return Refusal(
        403,
        "Sandbox is secured with traffic access token."
        " Provided token in header 'e2b-traffic-access-token' is invalid",
        fields={"sandboxId": sandbox_id},
        title="Invalid Traffic Access Token",
    )


def api_unavailable() -> Refusal:
    return Refusal(503, "The API is not available", fields={}, title="Service Unavailable")
