"""envd's plain HTTP endpoints other than /files: /health, /init, /envs, /metrics."""

from __future__ import annotations

import contextlib
import json
import os
import time

from hearth.envd.http11 import Request, Response
from hearth.envd.state import EnvdState

_last_cpu: list[tuple[int, int]] = []  # (busy, total) jiffies at the previous /metrics


def health(req: Request, state: EnvdState) -> Response:
    return Response(204, [("Cache-Control", "no-store")])


def init(req: Request, state: EnvdState) -> Response:
    """Configure the sandbox: env vars, access token, defaults, the clock, entropy and
    the CAs it trusts besides its template's.

    The node calls this once at create and after every restore. Once a token is set, only
    a caller that knows it may change anything, so a process inside the sandbox cannot
    take over envd by calling /init on localhost.
    """
    body = req.body.read()
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        return Response.error(400, "invalid JSON body")
    if not isinstance(data, dict):
        return Response.error(400, "invalid JSON body")
    with state.lock:
        if not state.accepts(req.headers.get("x-access-token")):
            return Response.error(401, "unauthorized access, please provide a valid access token")
        env_vars = data.get("envVars")
        if isinstance(env_vars, dict):
            state.env_vars.update({str(k): str(v) for k, v in env_vars.items()})
        if data.get("accessToken"):
            state.access_token = str(data["accessToken"])
        if data.get("defaultUser"):
            state.default_user = str(data["defaultUser"])
        if data.get("defaultWorkdir"):
            state.default_workdir = str(data["defaultWorkdir"])
    if data.get("timestamp"):
        _set_clock(str(data["timestamp"]))
    if data.get("entropy"):
        _add_entropy(str(data["entropy"]))
    if data.get("caBundle"):
        from hearth.envd.trust import add_to_system_bundle

        with contextlib.suppress(OSError):  # a read-only root keeps its own trust
            add_to_system_bundle(str(data["caBundle"]))
    return Response(204)


def _set_clock(timestamp: str) -> None:
    """Set the clock when it is off by more than a second (after a snapshot restore)."""
    from datetime import datetime

    try:
        wanted = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return
    if abs(wanted - time.time()) > 1:
        # A container shares the host's clock and may not set it: then leave it.
        with contextlib.suppress(OSError):
            time.clock_settime(time.CLOCK_REALTIME, wanted)


def _add_entropy(encoded: str) -> None:
    """Mix host entropy (base64) into the kernel's pool, credited, and reseed its CRNG:
    clones of one VM snapshot start with the same generator state."""
    import base64
    import fcntl
    import struct

    try:
        data = base64.b64decode(encoded, validate=True)[:512]
    except ValueError:
        return
    if not data:
        return
    rndaddentropy, rndreseedcrng = 0x40085203, 0x5207  # _IOW('R', 3, int[2]), _IO('R', 7)
    padded = data + bytes(-len(data) % 4)
    info = struct.pack("ii", len(data) * 8, len(data)) + padded
    # Not root, or not a VM (a container shares the host's pool): leave it.
    with contextlib.suppress(OSError), open("/dev/random", "wb") as random:
        fcntl.ioctl(random, rndaddentropy, info)
        fcntl.ioctl(random, rndreseedcrng)


def envs(req: Request, state: EnvdState) -> Response:
    return Response.json(200, dict(state.env_vars), [("Cache-Control", "no-store")])


def metrics(req: Request, state: EnvdState) -> Response:
    mem = _meminfo()
    total = mem.get("MemTotal", 0)
    cache = mem.get("Cached", 0) + mem.get("Buffers", 0)
    used = total - mem.get("MemAvailable", mem.get("MemFree", 0))
    disk = os.statvfs("/")
    disk_total = disk.f_blocks * disk.f_frsize
    disk_used = (disk.f_blocks - disk.f_bfree) * disk.f_frsize
    return Response.json(
        200,
        {
            "ts": int(time.time()),
            # The CPUs it may run on: a container's own (its cpuset), a VM's vCPUs.
            "cpu_count": len(os.sched_getaffinity(0)),
            "cpu_used_pct": _cpu_used_pct(),
            "mem_total": total,
            "mem_used": used,
            "mem_cache": cache,
            "mem_total_mib": total >> 20,
            "mem_used_mib": used >> 20,
            "disk_used": disk_used,
            "disk_total": disk_total,
        },
    )


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[name] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return out


def _cpu_used_pct() -> float:
    """CPU use since the previous call (the first call measures since boot)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    busy = total - idle
    prev_busy, prev_total = _last_cpu[0] if _last_cpu else (0, 0)
    _last_cpu[:] = [(busy, total)]
    span = total - prev_total
    return round(100.0 * (busy - prev_busy) / span, 2) if span > 0 else 0.0
