"""What a running sandbox uses of its own limits: CPU of its vCPUs, memory of its limit,
disk of its disk, read on the host where the host can (a container's cgroup and disk),
else from the sandbox's envd (a microVM's guest kernel knows its own).

A container is measured from outside, so that a sample costs a few reads of kernel
files and no request into the sandbox: its cgroup's CPU time and memory (cgroup v1 or
v2) and its disk's file system (`statvfs` of its mount point on the host). CPU use is
the CPU time it was given since the previous sample over the time its vCPUs had, so
100% means all of them busy; a first sample measures since its envd started.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.node.interface import SandboxUsage

CGROUP_ROOT = Path("/sys/fs/cgroup")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ContainerProbe:
    """Where the host reads a container sandbox's use."""

    cgroup: str  # its cgroup below each hierarchy's root ("hearth/ID")
    disk: Path  # a directory on its disk (its mount point on the host)
    init_pid: int | None  # envd's host pid: when its CPU time started counting


@dataclass(frozen=True)
class _Files:
    """A cgroup's files, resolved once per cgroup (v1 spreads them over hierarchies)."""

    v2: bool
    cpu: Path  # v2 cpu.stat; v1 cpuacct.usage
    memory: Path  # v2 memory.current; v1 memory.usage_in_bytes
    memory_limit: Path  # v2 memory.max; v1 memory.limit_in_bytes
    memory_stat: Path
    quota: tuple[Path, ...]  # v2 (cpu.max,); v1 (cpu.cfs_quota_us, cpu.cfs_period_us)


@dataclass
class _Seen:
    """What a cgroup's previous sample read, and what does not change while it runs."""

    files: _Files
    cpu_count: int
    cpu_seconds: float
    at: float  # `_uptime()` at the reading


class ContainerMeter:
    """Samples container sandboxes from the host; keeps each one's previous CPU reading.
    Blocking: call it in a thread, one call at a time."""

    def __init__(self, cgroup_root: Path = CGROUP_ROOT) -> None:
        self._root = cgroup_root
        self._unified = (cgroup_root / "cgroup.controllers").exists()
        self._seen: dict[str, _Seen] = {}

    def read(self, probes: dict[str, ContainerProbe], *, every: bool) -> dict[str, SandboxUsage]:
        """A sample of each probed sandbox, by the caller's key. One whose cgroup or disk
        is gone (it stopped meanwhile) is left out. `every`: the probes are all the
        running sandboxes, so the previous readings of any other are forgotten."""
        found: dict[str, SandboxUsage] = {}
        for key, probe in probes.items():
            try:
                found[key] = self._read(probe)
            except (OSError, ValueError):
                self._seen.pop(probe.cgroup, None)
        if every:
            for cgroup in self._seen.keys() - {p.cgroup for p in probes.values()}:
                del self._seen[cgroup]  # stopped or paused: its next run counts anew
        return found

    def _read(self, probe: ContainerProbe) -> SandboxUsage:
        seen = self._seen.get(probe.cgroup)
        files = seen.files if seen is not None else self._files(probe.cgroup)
        now, wall = _uptime(), time.time()
        cpu_seconds = _cpu_seconds(files)
        if seen is None:
            cpu_count = _cpu_count(files)
            since = _started(probe.init_pid, now)
            seen = _Seen(files, cpu_count, 0.0, since)
        span = (now - seen.at) * seen.cpu_count
        used = cpu_seconds - seen.cpu_seconds
        pct = min(100.0, max(0.0, 100.0 * used / span)) if span > 0 else 0.0
        self._seen[probe.cgroup] = _Seen(files, seen.cpu_count, cpu_seconds, now)
        memory = int(_first_line(files.memory))
        limit = _memory_limit(files.memory_limit)
        stat = _memory_stat(files.memory_stat, files.v2)
        disk = os.statvfs(probe.disk)
        return SandboxUsage(
            timestamp=wall,
            cpu_count=seen.cpu_count,
            cpu_used_pct=round(pct, 2),
            mem_used=max(0, memory - stat["inactive"]),
            mem_total=limit,
            mem_cache=stat["cache"],
            disk_used=(disk.f_blocks - disk.f_bfree) * disk.f_frsize,
            disk_total=disk.f_blocks * disk.f_frsize,
        )

    def _files(self, cgroup: str) -> _Files:
        if self._unified:
            base = self._root / cgroup
            return _Files(
                v2=True,
                cpu=base / "cpu.stat",
                memory=base / "memory.current",
                memory_limit=base / "memory.max",
                memory_stat=base / "memory.stat",
                quota=(base / "cpu.max",),
            )
        cpu = self._hierarchy("cpu", cgroup)
        memory = self._hierarchy("memory", cgroup)
        return _Files(
            v2=False,
            cpu=self._hierarchy("cpuacct", cgroup) / "cpuacct.usage",
            memory=memory / "memory.usage_in_bytes",
            memory_limit=memory / "memory.limit_in_bytes",
            memory_stat=memory / "memory.stat",
            quota=(cpu / "cpu.cfs_quota_us", cpu / "cpu.cfs_period_us"),
        )

    def _hierarchy(self, controller: str, cgroup: str) -> Path:
        """The cgroup's directory in the v1 hierarchy of `controller` (mounted alone, or
        with others as in `cpu,cpuacct`)."""
        alone = self._root / controller / cgroup
        if alone.is_dir():
            return alone
        for mount in self._root.iterdir():
            if controller in mount.name.split(",") and (mount / cgroup).is_dir():
                return mount / cgroup
        raise FileNotFoundError(f"no {controller} cgroup {cgroup}")


def _read(path: Path) -> bytes:
    """A kernel file's text (os.read: a sample reads hundreds of them a round)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _first_line(path: Path) -> str:
    return _read(path).split(b"\n", 1)[0].strip().decode()


def _field(text: bytes, name: bytes) -> int | None:
    """The value of line `name value` of a cgroup's key-value file, or None."""
    key = name + b" "
    if text.startswith(key):
        start = len(key)
    else:
        at = text.find(b"\n" + key)
        if at == -1:
            return None
        start = at + 1 + len(key)
    end = text.find(b"\n", start)
    return int(text[start : end if end != -1 else None])


def _cpu_seconds(files: _Files) -> float:
    if not files.v2:
        return int(_first_line(files.cpu)) / 1e9
    usage = _field(_read(files.cpu), b"usage_usec")
    if usage is None:
        raise ValueError(f"{files.cpu} has no usage_usec")
    return usage / 1e6


def _cpu_count(files: _Files) -> int:
    """The vCPUs its CPU quota gives it, as many as the host has at most (what its
    programs see through its cpuset and lxcfs)."""
    host = len(os.sched_getaffinity(0))
    if files.v2:
        limit, _, every = _first_line(files.quota[0]).partition(" ")
        if limit == "max":
            return host
        return min(host, max(1, -(-int(limit) // int(every))))
    quota = int(_first_line(files.quota[0]))
    period = int(_first_line(files.quota[1]))
    return host if quota <= 0 or period <= 0 else min(host, max(1, -(-quota // period)))


def _memory_limit(path: Path) -> int:
    value = _first_line(path)
    return int(value) if value != "max" else _host_memory()


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _memory_stat(path: Path, v2: bool) -> dict[str, int]:
    """Its page cache, and the part of it the kernel reclaims first (`inactive`), which
    `memory.current` counts but a sandbox does not hold (as `docker stats` shows it)."""
    cache, inactive = (
        (b"file", b"inactive_file") if v2 else (b"total_cache", b"total_inactive_file")
    )
    text = _read(path)
    return {"cache": _field(text, cache) or 0, "inactive": _field(text, inactive) or 0}


def _uptime() -> float:
    """Seconds since boot, on the clock /proc's process start times count on."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _started(pid: int | None, now: float) -> float:
    """When process `pid` started, in `_uptime()` seconds; `now` where it cannot be
    told, so that a first sample reads as idle."""
    if pid is None:
        return now
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return min(now, int(fields[19]) / _TICKS)
    return now


def from_envd(body: Any, at: float) -> SandboxUsage:
    """A sample from envd's `GET /metrics` answer (spec §3.1, snake_case) read at `at`
    on the host's clock (envd's `ts` is whole seconds of the guest's); ValueError if it
    is not one."""
    if not isinstance(body, dict):
        raise ValueError("envd's /metrics answer is not an object")
    try:
        return SandboxUsage(
            timestamp=at,
            cpu_count=int(body["cpu_count"]),
            cpu_used_pct=float(body["cpu_used_pct"]),
            mem_used=int(body["mem_used"]),
            mem_total=int(body["mem_total"]),
            mem_cache=int(body.get("mem_cache", 0)),
            disk_used=int(body.get("disk_used", 0)),
            disk_total=int(body.get("disk_total", 0)),
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"envd's /metrics answer lacks {e}") from None
