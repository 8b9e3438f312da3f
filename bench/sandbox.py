"""Benchmark whole sandboxes through `hearth serve` and the real E2B Python SDK.

    uv run python bench/sandbox.py [--runtime container|isolated] [--runs N] [--quick]

Starts `hearth serve` in this process (its own thread and event loop, a random port on
127.0.0.1, a throwaway data directory under /var/tmp with SQLite), points the `e2b` SDK
at it with the environment of spec §1.6 recipe A, and measures with template `base`:

1. create -> first command output: `Sandbox.create()` then `commands.run("echo ok")`,
   N sequential runs (each killed after), with the split and where create time goes
   (probes wrapped around the server's own functions in this process: API handler,
   node, network slot, launcher + OCI runtime, envd start, /init); twice: pooled (the
   server keeps the warm pool HEARTH_POOL_SIZE asks for, as `hearth serve` does, and
   each create waits for it to be full) and cold (a create without internet, which no
   pooled sandbox fits);
2. a burst of 20 concurrent creates, wall time until all are ready (median of 3);
3. host memory per idle sandbox (MemAvailable drop, PSS of its processes, its cgroup);
4. capacity: idle sandboxes created one after another until 400, the first failure, or
   MemAvailable under 2 GiB; then all are killed and the host is checked for leftovers.

Needs root. Every loop is bounded, all traffic stays on 127.0.0.1, every sandbox made is
killed even on Ctrl-C or failure, and no number fails anything: the script prints tables
and exits 0 unless it could not start at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import functools
import gc
import glob
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from envd import direct_envd, percentile, print_table, process_tree  # bench/envd.py

if TYPE_CHECKING:
    from hearth.serve import ServerThread

MiB = 1 << 20
GiB = 1 << 30
TEMPLATE = "base"
SANDBOX_TIMEOUT = 3600  # seconds: nothing may expire while the benchmark holds it
BURST = 20
CAPACITY_MAX = 400
MEM_FLOOR = 2 * GiB
CGROUP_PARENT = "hearth"

AIMS = {
    "p50": 100.0,  # ms, create -> first command output
    "p99": 250.0,
    "burst": 1500.0,  # ms, 20 concurrent creates all ready
    "memory": 30.0,  # MiB per idle sandbox
    "capacity": 300,  # idle sandboxes on this machine
}


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# --- host facts ----------------------------------------------------------------------------


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def meminfo(key: str) -> int:
    """A /proc/meminfo value in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0]) * 1024
    raise KeyError(key)


KERNEL_KEYS = ("Slab", "KernelStack", "PageTables", "Percpu")


def kernel_memory() -> int:
    """Bytes of kernel memory that sandboxes add to without any process owning it:
    slab (namespaces, mounts, sockets, veths), kernel stacks, page tables, per-CPU."""
    return sum(meminfo(k) for k in KERNEL_KEYS)


def mem_available(samples: int = 5) -> int:
    """MemAvailable, the median of a few reads a moment apart (other work moves it)."""
    values = []
    for i in range(samples):
        if i:
            time.sleep(0.2)
        values.append(meminfo("MemAvailable"))
    return int(statistics.median(values))


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    os_name = "?"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    oci = "?"
    for name in ("crun", "runc"):
        if path := shutil.which(name):
            out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            oci = out.splitlines()[0] if out else name
            break
    from importlib.metadata import version

    return (
        f"{os.cpu_count()} CPUs ({cpu}), {meminfo('MemTotal') / GiB:.1f} GiB, "
        f"Linux {platform.release()}, {os_name}; Python {platform.python_version()}, "
        f"e2b {version('e2b')}, {oci}"
    )


# --- probes: where create time goes ----------------------------------------------------------

_probe: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "probe", default=None
)


class Probes:
    """Timestamps taken inside the server's own functions (wrapped in this process; the
    source is untouched). One dict per sandbox, keyed by its id; asyncio tasks and
    `asyncio.to_thread` carry the dict of the create they belong to."""

    def __init__(self) -> None:
        self.by_id: dict[str, dict[str, float]] = {}
        self.missing: list[str] = []
        self._undo: list[Callable[[], None]] = []

    def install(self) -> None:
        from hearth.api import _sandboxes as api_sandboxes
        from hearth.node import local
        from hearth.node.network import slots
        from hearth.store import Store

        self._wrap_async(api_sandboxes.Sandboxes, "_create", "api", top=True)
        self._wrap_async(api_sandboxes.Sandboxes, "_template", "template")
        self._wrap_async(Store, "count_running", "count")
        self._wrap_async(Store, "insert_sandbox", "insert")
        self._wrap_async(Store, "record_template_spawn", "spawned")
        self._wrap_async(Store, "add_event", "event")
        self._wrap_async(local.LocalNode, "create", "node", sandbox_id=True)
        self._mark_pooled()
        self._wrap_async(local.LocalNode, "_artifact", "root")
        self._wrap_sync(slots.NetworkPool, "acquire", "slot")
        self._wrap_sync(slots._netns, "create_pinned", "netns")
        self._wrap_sync(slots.SlotRules, "add_slot", "nft")
        try:
            from hearth.node.runtime.container import sandbox as container
        except ImportError:
            self.missing.append("container runtime")
            return
        self._wrap_sync(container.ContainerRuntime, "_fill_directory", "directory")
        self._wrap_sync(container.ContainerRuntime, "_launch", "popen")
        self._wrap_async(container.ContainerRuntime, "_wait_healthy", "healthy")
        self._wrap_async(container, "init_envd", "init")
        self._mark_pid_file(container._Container)
        with contextlib.suppress(ImportError):
            from hearth.node.runtime import isolated

            self._wrap_sync(isolated.IsolatedEnvd, "start", "isolated_start")

    def uninstall(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def _patch(self, owner: object, name: str, new: object) -> None:
        if isinstance(owner, type) and name not in owner.__dict__:  # inherited
            setattr(owner, name, new)
            self._undo.append(lambda: delattr(owner, name))
            return
        old = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, new)
        self._undo.append(lambda: setattr(owner, name, old))

    def _wrap_async(
        self, owner: object, name: str, key: str, *, top: bool = False, sandbox_id: bool = False
    ) -> None:
        orig = getattr(owner, name, None)
        if orig is None:
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
            return
        by_id = self.by_id

        @functools.wraps(orig)
        async def wrapper(*args: object, **kwargs: object) -> object:
            token = _probe.set({}) if top else None
            record = _probe.get()
            if record is not None and sandbox_id:
                spec = args[1] if len(args) > 1 else kwargs.get("spec")
                if (sid := getattr(spec, "sandbox_id", None)) is not None:
                    by_id[sid] = record
            t = time.perf_counter()
            try:
                return await orig(*args, **kwargs)
            finally:
                if record is not None:
                    record[f"{key}_start"] = t
                    record[key] = time.perf_counter() - t
                if token is not None:
                    _probe.reset(token)

        self._patch(owner, name, wrapper)

    def _wrap_sync(self, owner: object, name: str, key: str) -> None:
        orig = getattr(owner, name, None)
        if orig is None:
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
            return

        @functools.wraps(orig)
        def wrapper(*args: object, **kwargs: object) -> object:
            record = _probe.get()
            t = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                if record is not None:
                    record[f"{key}_start"] = t
                    record[key] = time.perf_counter() - t

        self._patch(owner, name, wrapper)

    def _mark_pooled(self) -> None:
        """`claim` (ms) and `pooled` (1 or 0): whether the create took a warm-pool member."""
        from hearth.node.pool import WarmPool

        orig = WarmPool.take

        @functools.wraps(orig)
        async def wrapper(*args: object, **kwargs: object) -> object:
            record = _probe.get()
            t = time.perf_counter()
            result = await orig(*args, **kwargs)
            if record is not None:
                record["pooled"] = float(result is not None)
                if result is not None:
                    record["claim"] = time.perf_counter() - t
            return result

        self._patch(WarmPool, "take", wrapper)

    def _mark_pid_file(self, container_cls: type) -> None:
        """The moment the node first sees the OCI runtime's pid file (the container and
        its init exist); the node looks each ~5 ms while it waits for /health."""
        orig = getattr(container_cls, "_open_init", None)
        if orig is None:
            self.missing.append("_Container._open_init")
            return

        @functools.wraps(orig)
        def wrapper(self_: object, *args: object, **kwargs: object) -> object:
            result = orig(self_, *args, **kwargs)
            record = _probe.get()
            if record is not None and "pid_file" not in record and self_.init_pid:
                record["pid_file"] = time.perf_counter()
            return result

        self._patch(container_cls, "_open_init", wrapper)


PHASES = (
    # (label, function of one probe record and the client's create seconds -> seconds)
    ("client: SDK, HTTP, gateway (create - API handler)", lambda r, c: c - r["api"]),
    ("API handler: template, limit, store (API - node)", lambda r, c: r["api"] - r["node"]),
    ("  of which: template lookup", lambda r, c: r["template"]),
    (
        "  of which: waiting for the team's lock",
        lambda r, c: r["count_start"] - r["template_start"] - r["template"],
    ),
    ("  of which: count running (team limit)", lambda r, c: r["count"]),
    ("  of which: insert the sandbox", lambda r, c: r["insert"]),
    ("  of which: spawn count + created event", lambda r, c: r["spawned"] + r["event"]),
    ("node: claim a pooled sandbox (checks, /init, record)", lambda r, c: r["claim"]),
    ("node: template artifact lookup", lambda r, c: r["root"]),
    ("node: network slot (NetworkPool.acquire)", lambda r, c: r["slot"]),
    ("  of which: netns, veth pair, addresses", lambda r, c: r["netns"]),
    ("  of which: nft rule elements", lambda r, c: r["nft"]),
    ("node: sandbox directory, config.json", lambda r, c: r["directory"]),
    ("node: spawn the launcher (Popen)", lambda r, c: r["popen"]),
    (
        "node: launcher + crun run until its pid file",
        lambda r, c: r["pid_file"] - r["popen_start"] - r["popen"],
    ),
    (
        "node: envd start, pid file -> /health 204",
        lambda r, c: r["healthy_start"] + r["healthy"] - r["pid_file"],
    ),
    ("node: envd /init", lambda r, c: r["init"]),
    ("node: isolated envd start (isolated runtime)", lambda r, c: r["isolated_start"]),
    (
        "node: the rest (record, bookkeeping)",
        lambda r, c: (
            r["node"]
            - r["root"]
            - sum(r.get(k, 0.0) for k in ("slot", "directory", "popen", "healthy", "init"))
            - r.get("isolated_start", 0.0)
        ),
    ),
)


# --- sandboxes and their cleanup -------------------------------------------------------------


class Tracker:
    """Every sandbox this run made and not yet killed, with the key that made it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.live: dict[str, str] = {}

    def add(self, sandbox_id: str, key: str) -> None:
        with self._lock:
            self.live[sandbox_id] = key

    def discard(self, sandbox_id: str) -> None:
        with self._lock:
            self.live.pop(sandbox_id, None)

    def items(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.live.items())


@dataclass
class Bench:
    runtime: str
    data_dir: Path
    api_key: str
    tracker: Tracker = field(default_factory=Tracker)
    keys: list[str] = field(default_factory=list)  # extra teams' keys (capacity)
    # API id -> the node's own id (a sandbox claimed from the warm pool keeps the
    # pool member's id for its directory, container and cgroups).
    own_ids: dict[str, str] = field(default_factory=dict)
    pool: int = 0  # pool members of every template when all pools are full
    node: object | None = None  # the server's LocalNode (`Running.app.state.node`)

    def create(self, key: str | None = None, **options: object):
        from e2b import Sandbox

        key = key or self.api_key
        sbx = Sandbox.create(TEMPLATE, timeout=SANDBOX_TIMEOUT, api_key=key, **options)
        self.tracker.add(sbx.sandbox_id, key)
        return sbx

    def kill(self, sandbox_id: str, key: str | None = None) -> None:
        from e2b import Sandbox

        Sandbox.kill(sandbox_id, api_key=key or self.api_key)
        self.tracker.discard(sandbox_id)

    def kill_all(self, items: list[tuple[str, str]], workers: int = 8) -> list[str]:
        """Kill these sandboxes in parallel; returns the errors."""
        errors: list[str] = []

        def one(item: tuple[str, str]) -> None:
            try:
                self.kill(*item)
            except Exception as e:  # noqa: BLE001 - collected and reported
                errors.append(f"{item[0]}: {type(e).__name__}: {e}"[:200])

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, items))
        return errors

    def listed(self) -> list[tuple[str, str]]:
        """What the API still lists as running, for every key this run holds."""
        from e2b import Sandbox

        found = []
        for key in dict.fromkeys([self.api_key, *self.keys]):
            try:
                pages = Sandbox.list(api_key=key, limit=100)
                for _ in range(100):  # bounded: 100 pages of 100
                    if not pages.has_next:
                        break
                    found += [(info.sandbox_id, key) for info in pages.next_items()]
            except Exception as e:  # noqa: BLE001
                print(f"  listing sandboxes failed: {e}", flush=True)
        return found

    # --- what a sandbox holds on the host ---------------------------------------------

    @staticmethod
    def listdir(path: Path) -> list[str]:
        return sorted(os.listdir(path)) if path.is_dir() else []

    def sandbox_dirs(self) -> list[str]:
        d = self.data_dir / "node" / "sandboxes"
        return sorted(os.listdir(d)) if d.is_dir() else []

    def records(self) -> dict[str, dict]:
        """The node's sandbox records, by the sandbox's own id."""
        found = {}
        for name in self.sandbox_dirs():
            with contextlib.suppress(OSError, ValueError):
                path = self.data_dir / "node" / "sandboxes" / name / "record.json"
                found[name] = json.loads(path.read_text())
        return found

    def own_id(self, sandbox_id: str) -> str:
        if sandbox_id not in self.own_ids:
            claimed = [n for n, r in self.records().items() if r.get("claimed_as") == sandbox_id]
            self.own_ids[sandbox_id] = claimed[0] if claimed else sandbox_id
        return self.own_ids[sandbox_id]

    def waiting(self) -> int:
        """Pool members ready and not claimed."""
        node = self.node
        if node is not None:
            for _ in range(10):  # the server's thread may change the dict meanwhile
                with contextlib.suppress(RuntimeError):
                    return sum(node.pooled().values())  # type: ignore[attr-defined]
        return sum(
            1
            for r in self.records().values()
            if r.get("pooled") and not r.get("claimed_as") and r.get("monitor_pid")
        )

    def wait_pool(self, timeout: float = 300) -> bool:
        """Wait (bounded) until every pool is full; False if they did not fill."""
        deadline = time.monotonic() + timeout
        while self.waiting() < self.pool:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def fill_pools(self) -> None:
        """Wait for the server's warm pools to fill before anything is measured."""
        t = time.perf_counter()
        filled = self.wait_pool()
        print(
            f"warm pools {'full' if filled else 'NOT full'} after"
            f" {time.perf_counter() - t:.1f} s: {self.waiting()} sandboxes",
            flush=True,
        )

    def monitor_pid(self, sandbox_id: str) -> int | None:
        sandbox_id = self.own_id(sandbox_id)
        try:
            path = self.data_dir / "node" / "sandboxes" / sandbox_id / "record.json"
            return json.loads(path.read_text()).get("monitor_pid")
        except (OSError, ValueError):
            return None


def memory_cgroup(sandbox_id: str) -> Path | None:
    for path in (
        Path(f"/sys/fs/cgroup/memory/{CGROUP_PARENT}/{sandbox_id}"),  # v1
        Path(f"/sys/fs/cgroup/{CGROUP_PARENT}/{sandbox_id}"),  # v2
    ):
        if path.is_dir():
            return path
    return None


def cgroup_usage(path: Path) -> int:
    for name in ("memory.usage_in_bytes", "memory.current"):
        with contextlib.suppress(OSError):
            return int((path / name).read_text())
    return 0


def cgroup_cpu_s(sandbox_id: str) -> float:
    """CPU seconds the sandbox's cgroup has used (envd and everything it ran)."""
    for path, scale in (
        (f"/sys/fs/cgroup/cpuacct/{CGROUP_PARENT}/{sandbox_id}/cpuacct.usage", 1e-9),  # v1
        (f"/sys/fs/cgroup/cpu,cpuacct/{CGROUP_PARENT}/{sandbox_id}/cpuacct.usage", 1e-9),
    ):
        with contextlib.suppress(OSError, ValueError):
            return int(Path(path).read_text()) * scale
    with contextlib.suppress(OSError, ValueError):  # v2
        stat = Path(f"/sys/fs/cgroup/{CGROUP_PARENT}/{sandbox_id}/cpu.stat").read_text()
        for line in stat.splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) * 1e-6
    return 0.0


def process_cpu_s(pid: int) -> float:
    """CPU seconds of a running process and of the children it has waited for."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    """CPU seconds of this process, all threads: the server, the gateway and the SDK."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cgroup_pids(path: Path) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    return []


def envd_like_processes() -> set[int]:
    """Host pids of envd processes and of the isolated runtime's launchers."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hearth.envd" in argv or any(a.endswith(b"runtime/_launcher.py") for a in argv):
            found.add(int(entry))
    return found


def all_mount_tables() -> str:
    seen, tables = set(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ns = os.readlink(f"/proc/{entry}/ns/mnt")
                if ns not in seen:
                    seen.add(ns)
                    tables.append(Path(f"/proc/{entry}/mountinfo").read_text())
            except OSError:
                pass
    return "".join(tables)


def leftovers(bench: Bench, ids: set[str], monitors: set[int]) -> dict[str, list]:
    """What of these sandboxes exists on the host now (empty: all gone)."""
    node = bench.data_dir / "node"
    ids = {bench.own_ids.get(s, s) for s in ids}
    # The warm pool's sandboxes waiting to be claimed are the server's, not leftovers.
    pool = {n: r for n, r in bench.records().items() if r.get("pooled") and not r["claimed_as"]}
    slots = {str(r["slot_index"]) for r in pool.values()}
    pooled = [f"/sandboxes/{n}" for n in pool] + [f"/netns/{i} " for i in slots]
    found = {
        "API lists": [s for s, _ in bench.listed() if s in ids],
        "sandbox dirs": [d for d in bench.sandbox_dirs() if d in ids],
        "runtime state": [n for n in bench.listdir(node / "oci") if n not in pool],
        "netns pins": [n for n in bench.listdir(node / "netns") if n not in slots],
        "cgroups": sorted(
            p
            for s in ids
            for p in glob.glob(f"/sys/fs/cgroup/*/{CGROUP_PARENT}/{s}")
            + glob.glob(f"/sys/fs/cgroup/{CGROUP_PARENT}/{s}")
        ),
        "monitor processes": sorted(p for p in monitors if Path(f"/proc/{p}").exists()),
        "mounts": [
            line
            for line in all_mount_tables().splitlines()
            if str(node) in line and not any(p in line for p in pooled)
        ],
    }
    return {k: v for k, v in found.items() if v}


def wait_gone(bench: Bench, ids: set[str], monitors: set[int], timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(bench, ids, monitors)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


# --- 1. create -> first command ----------------------------------------------------------


@dataclass
class Series:
    what: str
    samples: list[float] = field(default_factory=list)  # ms

    def stats(self) -> tuple[float, float, float]:
        s = sorted(self.samples)
        if not s:
            return (float("nan"),) * 3
        return statistics.median(s), percentile(s, 95), percentile(s, 99)

    def cells(self, aim: str = "") -> list[str]:
        p50, p95, p99 = self.stats()
        return [self.what, str(len(self.samples)), f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}", aim]


def bench_latency(
    bench: Bench, probes: Probes, runs: int, warmup: int, pool: int
) -> dict[str, object]:
    """With `pool` > 0, each create waits for the warm pool to be full first and takes a
    pooled sandbox; with 0, each asks for no internet, which no pooled sandbox fits, so
    it starts cold (the same work as a create on a node without a pool)."""
    label = "pooled" if pool else "cold"
    options = {} if pool else {"allow_internet_access": False}
    total = Series(f'{label}: Sandbox.create() + commands.run("echo ok")')
    create = Series("  Sandbox.create() alone")
    first = Series('  first commands.run("echo ok")')
    second = Series('  second commands.run("echo ok") (warm, for reference)')
    kill = Series("kill() (not in the total)")
    records: list[tuple[dict[str, float], float]] = []
    cpu = {"self": [], "monitor": [], "sandbox": []}  # CPU ms per create + first run
    wrong = 0
    claimed = 0
    print(f"\n[1] create -> first output, {label}: {warmup} warm-up + {runs} runs", flush=True)
    for i in range(warmup + runs):
        if pool and not bench.wait_pool():
            print("  the pool did not fill: this create may start cold", flush=True)
        c0 = self_cpu_s()
        t0 = time.perf_counter()
        sbx = bench.create(**options)
        t1 = time.perf_counter()
        out = sbx.commands.run("echo ok")
        t2 = time.perf_counter()
        c1 = self_cpu_s()
        monitor = bench.monitor_pid(sbx.sandbox_id)
        c_monitor = process_cpu_s(monitor) if monitor else 0.0
        c_sandbox = cgroup_cpu_s(bench.own_id(sbx.sandbox_id))
        sbx.commands.run("echo ok")
        t3 = time.perf_counter()
        bench.kill(sbx.sandbox_id)
        t4 = time.perf_counter()
        if out.stdout != "ok\n":
            wrong += 1
        if i < warmup:
            continue
        total.samples.append((t2 - t0) * 1000)
        create.samples.append((t1 - t0) * 1000)
        first.samples.append((t2 - t1) * 1000)
        second.samples.append((t3 - t2) * 1000)
        kill.samples.append((t4 - t3) * 1000)
        cpu["self"].append((c1 - c0) * 1000)
        cpu["monitor"].append(c_monitor * 1000)
        cpu["sandbox"].append(c_sandbox * 1000)
        if record := probes.by_id.pop(sbx.sandbox_id, None):
            records.append((record, t1 - t0))
            claimed += int(record.get("pooled", 0))
        done = i + 1 - warmup
        if done % max(runs // 5, 1) == 0:
            print(f"  {done}/{runs}: last {total.samples[-1]:.0f} ms", flush=True)
    probes.by_id.clear()
    phases = phases_of(records)
    p50, _, p99 = total.stats()
    rows = [
        total.cells(
            f"p50 <= {AIMS['p50']:.0f}: {verdict(p50 <= AIMS['p50'])}; "
            f"p99 <= {AIMS['p99']:.0f}: {verdict(p99 <= AIMS['p99'])}"
        ),
        create.cells(),
        first.cells(),
        second.cells(),
        kill.cells(),
    ]
    print_table(
        f"Create -> first command output, {label} ({claimed}/{len(records)} creates took"
        " a pooled sandbox) (ms)",
        ["what", "n", "p50", "p95", "p99", "aim"],
        rows,
    )
    if wrong:
        print(f"  WARNING: {wrong} first runs did not print 'ok'", flush=True)
    create_p50 = create.stats()[0]
    print_phases(
        "Where Sandbox.create() time goes (ms, per phase over the same runs; medians do "
        "not add up exactly)",
        phases,
        create_p50,
    )
    if probes.missing:
        print(f"  (probes not installed: {', '.join(probes.missing)})", flush=True)
    cpu_total = [sum(v) for v in zip(*cpu.values(), strict=True)]
    ncpu = os.cpu_count() or 1
    crow = [Series("this process: API, node, gateway and the SDK client", cpu["self"]).cells()]
    if bench.runtime == "container":
        crow += [
            Series("launcher + crun (the monitor process, so far)", cpu["monitor"]).cells(),
            Series("the sandbox's cgroup: envd start, /init, the command", cpu["sandbox"]).cells(),
            Series("total", cpu_total).cells(
                "pooled: the launcher's and most of the sandbox's CPU went before the"
                " create, while it waited in the pool"
                if pool
                else f"so {BURST} creates need >= {BURST * statistics.median(cpu_total) / ncpu:.0f}"
                f" ms of wall time on {ncpu} CPUs"
                if cpu_total
                else ""
            ),
        ]
    else:
        crow[0][-1] = "envd's own CPU is not counted with this runtime"
    print_table(
        "CPU time per create + first command (ms of CPU; the monitor's after the command)",
        ["where", "n", "p50", "p95", "p99", "note"],
        crow,
    )
    return {"p50": p50, "p99": p99, "create_p50": create_p50, "phases": phases}


def phases_of(records: list[tuple[dict[str, float], float]]) -> dict[str, list[float]]:
    """Per phase, its ms in each (probe record, client's create seconds)."""
    phases: dict[str, list[float]] = {label: [] for label, _ in PHASES}
    for record, client_s in records:
        for label, fn in PHASES:
            with contextlib.suppress(KeyError):
                phases[label].append(fn(record, client_s) * 1000)
    return phases


def print_phases(title: str, phases: dict[str, list[float]], create_p50: float) -> None:
    rows = []
    for label, values in phases.items():
        if not values:
            continue
        s = sorted(values)
        med = statistics.median(s)
        rows.append(
            [
                label,
                f"{med:.1f}",
                f"{percentile(s, 95):.1f}",
                f"{s[-1]:.1f}",
                f"{100 * med / create_p50:.0f}%",
            ]
        )
    if rows:
        print_table(title, ["phase", "p50", "p95", "max", "of create p50"], rows)


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def bench_references(runs: int) -> list[list[str]]:
    """Floors of the pieces a create runs, measured alone on the host."""
    rows = []

    def spawn(argv: list[str]) -> float:
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return (time.perf_counter() - t) * 1000

    launcher = [sys.executable, "-I", "-S", "-c", "import ctypes, json"]
    rows.append(("host python -I -S, import ctypes+json, spawn->exit (launcher floor)", launcher))
    if crun := shutil.which("crun") or shutil.which("runc"):
        rows.append((f"{Path(crun).name} --version, spawn->exit", [crun, "--version"]))
    out = []
    for label, argv in rows:
        s = sorted(spawn(argv) for _ in range(runs))
        out.append([label, str(runs), f"{statistics.median(s):.1f}", f"{percentile(s, 95):.1f}"])
    try:
        from hearth.node.guest.envd_bundle import ensure_bundle

        bundle = ensure_bundle()
        samples = []
        for _ in range(runs):
            with direct_envd(bundle) as (_, _, ms):
                samples.append(ms)
        s = sorted(samples)
        out.append(
            [
                "envd started directly on the host: spawn -> /health 204",
                str(runs),
                f"{statistics.median(s):.1f}",
                f"{percentile(s, 95):.1f}",
            ]
        )
    except Exception as e:  # noqa: BLE001
        out.append(["envd started directly on the host", "-", "-", f"FAILED: {e}"[:100]])
    return out


# --- 2. burst ------------------------------------------------------------------------------


def one_burst(bench: Bench, size: int) -> tuple[float, list[tuple[str, float]], list[str]]:
    """`size` threads create at once; (ms until all are ready, [(id, ms)], errors)."""
    made: list[tuple[str, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    go = threading.Event()

    def one() -> None:
        go.wait()
        t = time.perf_counter()
        try:
            sbx = bench.create()
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"{type(e).__name__}: {e}"[:160])
            return
        with lock:
            made.append((sbx.sandbox_id, (time.perf_counter() - t) * 1000))

    threads = [threading.Thread(target=one) for _ in range(size)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # every thread is waiting on `go`
    t0 = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    return (time.perf_counter() - t0) * 1000, made, errors


def bench_burst(bench: Bench, probes: Probes, bursts: int, size: int) -> float:
    print(f"\n[2] burst: {bursts} x {size} concurrent creates", flush=True)
    rows, walls = [], []
    records: list[tuple[dict[str, float], float]] = []
    for b in range(bursts):
        probes.by_id.clear()
        bench.wait_pool()
        busy0, total0 = cpu_busy()
        self0 = self_cpu_s()
        wall, made, errors = one_burst(bench, size)
        busy1, total1 = cpu_busy()
        self1 = self_cpu_s()
        busy = 100 * (busy1 - busy0) / max(total1 - total0, 1)
        host_s = (busy1 - busy0) / os.sysconf("SC_CLK_TCK")
        box_s = sum(cgroup_cpu_s(bench.own_id(s)) for s, _ in made)
        mon_s = sum(process_cpu_s(m) for s, _ in made if (m := bench.monitor_pid(s)))
        records += [(probes.by_id[s], ms / 1000) for s, ms in made if s in probes.by_id]
        pooled = sum(int(probes.by_id.get(s, {}).get("pooled", 0)) for s, _ in made)
        each = sorted(ms for _, ms in made)
        errs = bench.kill_all([(s, bench.api_key) for s, _ in made])
        walls.append(wall)
        rows.append(
            [
                f"burst {b + 1}",
                f"{len(made)}/{size} ({pooled} pooled)",
                f"{wall:.0f}",
                f"{statistics.median(each):.0f}" if each else "-",
                f"{each[-1]:.0f}" if each else "-",
                f"{busy:.0f}%",
                f"{host_s:.1f} / {self1 - self0:.1f} / {mon_s:.1f} / {box_s:.1f}",
                "; ".join(errors[:2] + errs[:2]) or "",
            ]
        )
        print(f"  burst {b + 1}: {wall:.0f} ms, {len(made)}/{size} made", flush=True)
        time.sleep(1)
    med = statistics.median(walls)
    rows.append(
        [
            "median",
            "",
            f"{med:.0f}",
            "",
            "",
            "",
            "",
            f"aim <= {AIMS['burst']:.0f}: {verdict(med <= AIMS['burst'])}",
        ]
    )
    print_table(
        f"Burst of {size} concurrent Sandbox.create() (ms)",
        [
            "what",
            "ready",
            "wall, all ready",
            "create p50",
            "create max",
            "host CPU busy",
            "CPU s: host / this process / launchers+crun / sandboxes",
            "note",
        ],
        rows,
    )
    probes.by_id.clear()
    print_phases(
        f"Where create time goes inside the bursts (ms, {len(records)} creates)",
        phases_of(records),
        statistics.median(ms * 1000 for _, ms in records) if records else float("nan"),
    )
    return med


# --- 3. idle memory ---------------------------------------------------------------------


def sandbox_memory(bench: Bench, sandbox_id: str) -> dict[str, float]:
    """KiB: PSS of the processes in its cgroup, of its OCI runtime monitor, and its
    cgroup's memory usage."""
    out = {"pss": 0.0, "monitor": 0.0, "cgroup": 0.0}
    cg = memory_cgroup(bench.own_id(sandbox_id))
    if cg is not None:
        out["pss"] = float(sum(pss_kib(p) for p in cgroup_pids(cg)))
        out["cgroup"] = cgroup_usage(cg) / 1024
    if (monitor := bench.monitor_pid(sandbox_id)) is not None:
        out["monitor"] = float(pss_kib(monitor))
    return out


def bench_memory(bench: Bench, count: int) -> float:
    print(f"\n[3] idle memory: {count} sandboxes", flush=True)
    me = os.getpid()
    gc.collect()
    bench.wait_pool()
    time.sleep(2)
    before_envd = envd_like_processes()
    avail0, rss0, kern0 = mem_available(), rss_kib(me), kernel_memory()
    ids = []
    for _ in range(count):
        ids.append(bench.create().sandbox_id)
    bench.wait_pool()  # the pool as full as before: only the idle sandboxes are new
    time.sleep(3)  # idle: envd has settled after /init
    gc.collect()
    avail1, rss1, kern1 = mem_available(), rss_kib(me), kernel_memory()
    per = {k: [] for k in ("pss", "monitor", "cgroup")}
    if bench.runtime == "container":
        for s in ids:
            for k, v in sandbox_memory(bench, s).items():
                per[k].append(v / 1024)
    else:
        new = envd_like_processes() - before_envd
        tree = {p for pid in new for p in process_tree(pid)}
        per["pss"] = [sum(pss_kib(p) for p in tree) / 1024 / count] * count
    drop = (avail0 - avail1) / MiB / count
    errs = bench.kill_all([(s, bench.api_key) for s in ids])

    def cells(label: str, values: list[float], note: str = "") -> list[str]:
        if not values:
            return [label, "-", "-", "-", note or "n/a for this runtime"]
        return [
            label,
            f"{statistics.mean(values):.1f}",
            f"{min(values):.1f}",
            f"{max(values):.1f}",
            note,
        ]

    if len(per["monitor"]) == len(per["pss"]):
        pss_total = [a + b for a, b in zip(per["pss"], per["monitor"], strict=True)]
    else:
        pss_total = per["pss"]
    kernel = (kern1 - kern0) / MiB / count
    floor = (statistics.mean(pss_total) if pss_total else 0.0) + max(kernel, 0.0)
    estimate = max(drop, floor)
    rows = [
        cells(
            "MemAvailable drop / sandbox (host, everything)",
            [drop],
            "" if drop >= floor else "below the floor: other work on the host moved it",
        ),
        cells(
            "  used for the aim: the larger of that and PSS + kernel growth",
            [estimate],
            f"aim <= {AIMS['memory']:.0f}: {verdict(estimate <= AIMS['memory'])}",
        ),
        cells("PSS of the sandbox's processes (envd tree)", per["pss"]),
        cells("PSS of its OCI runtime monitor (crun run)", per["monitor"]),
        cells("  sum of the two", pss_total),
        cells("its cgroup's memory usage (incl. page cache, kmem)", per["cgroup"]),
        cells(
            "growth of kernel memory / sandbox (" + "+".join(KERNEL_KEYS) + ")",
            [kernel],
        ),
        cells(
            "growth of this process (server + SDK) RSS / sandbox", [(rss1 - rss0) / 1024 / count]
        ),
    ]
    print_table(
        f"Host memory per idle sandbox (MiB, {count} sandboxes, idle 3 s)",
        ["measure", "mean", "min", "max", "note"],
        rows,
    )
    if errs:
        print(f"  kill errors: {errs[:3]}", flush=True)
    return estimate


# --- 4. capacity --------------------------------------------------------------------------


def capacity_verdict(held: int, cap: int) -> str:
    if held >= AIMS["capacity"]:
        return "met"
    if held >= cap:
        return f"not tested (bound {cap})"
    return "MISSED"


def extra_keys(database_url: str, count: int) -> list[str]:
    """API keys of `count` new teams (the API limits concurrent sandboxes per team)."""
    from hearth import store

    async def make() -> list[str]:
        async with await store.open(database_url) as opened:
            keys = []
            for i in range(count):
                team = await opened.create_team(f"bench-{os.getpid()}-{i}")
                key, _ = await opened.create_api_key(team.id, "bench")
                keys.append(key)
            return keys

    return asyncio.run(make())


def bench_capacity(bench: Bench, database_url: str, cap: int) -> tuple[int, str]:
    from hearth.api import ApiSettings

    per_team = ApiSettings().max_concurrent or cap
    teams = -(-cap // per_team)
    bench.keys = [bench.api_key, *extra_keys(database_url, teams - 1)]
    print(
        f"\n[4] capacity: up to {cap} idle sandboxes ({teams} teams: the API allows "
        f"{per_team} running per team), stop at the first failure or MemAvailable "
        f"< {MEM_FLOOR / GiB:.0f} GiB",
        flush=True,
    )
    gc.collect()
    avail0 = mem_available()
    load0 = loadavg()
    made: list[tuple[str, str]] = []
    monitors: set[int] = set()
    times: list[float] = []
    reason = f"reached the bound of {cap}"
    t_start = time.perf_counter()
    while len(made) < cap:
        avail = meminfo("MemAvailable")
        if avail < MEM_FLOOR:
            reason = f"MemAvailable {avail / GiB:.2f} GiB < {MEM_FLOOR / GiB:.0f} GiB"
            break
        key = bench.keys[len(made) // per_team]
        t = time.perf_counter()
        try:
            sbx = bench.create(key)
        except Exception as e:  # noqa: BLE001 - the first failure ends the phase
            reason = f"create #{len(made) + 1} failed: {type(e).__name__}: {e}"[:300]
            break
        times.append((time.perf_counter() - t) * 1000)
        made.append((sbx.sandbox_id, key))
        if (m := bench.monitor_pid(sbx.sandbox_id)) is not None:
            monitors.add(m)
        if len(made) % 50 == 0:
            print(
                f"  {len(made)} running, MemAvailable {avail / GiB:.2f} GiB, last create "
                f"{times[-1]:.0f} ms, load {loadavg()}",
                flush=True,
            )
    fill_s = time.perf_counter() - t_start
    time.sleep(3)
    avail1 = mem_available()
    load1 = loadavg()
    held = len(made)
    pss = [sandbox_memory(bench, s) for s, _ in made] if bench.runtime == "container" else []
    print(f"  held {held}; stopped: {reason}", flush=True)

    t = time.perf_counter()
    errors = bench.kill_all(made)
    kill_s = time.perf_counter() - t
    left = wait_gone(bench, {s for s, _ in made}, monitors)

    rows = [
        [
            "idle sandboxes held",
            str(held),
            f"aim >= {AIMS['capacity']}: {capacity_verdict(held, cap)}",
        ],
        ["why it stopped", reason, ""],
        ["time to create them, one after another", f"{fill_s:.1f} s", ""],
        [
            "MemAvailable before / with all running",
            f"{avail0 / GiB:.2f} / {avail1 / GiB:.2f} GiB",
            f"{(avail0 - avail1) / MiB / max(held, 1):.1f} MiB per sandbox",
        ],
        ["load average before / with all running", f"{load0} / {load1}", ""],
    ]
    if pss:
        rows.append(
            [
                "with all running, mean per sandbox: PSS (envd tree + crun) / cgroup usage",
                f"{statistics.mean(m['pss'] + m['monitor'] for m in pss) / 1024:.1f} / "
                f"{statistics.mean(m['cgroup'] for m in pss) / 1024:.1f} MiB",
                "",
            ]
        )
    step = 50 if held >= 100 else max(held // 4, 1)
    for lo in range(0, held, step):
        chunk = sorted(times[lo : lo + step])
        rows.append(
            [
                f"create latency, sandboxes {lo + 1}-{lo + len(chunk)} (p50 / p95 / max ms)",
                f"{statistics.median(chunk):.0f} / {percentile(chunk, 95):.0f} / {chunk[-1]:.0f}",
                "",
            ]
        )
    rows += [
        [
            "kill all (8 threads)",
            f"{kill_s:.1f} s",
            f"{len(errors)} errors" + (f": {errors[0]}" if errors else ""),
        ],
        [
            "left on the host afterwards",
            "nothing" if not left else json.dumps({k: v[:3] for k, v in left.items()})[:200],
            "",
        ],
    ]
    print_table("Capacity (idle sandboxes)", ["what", "value", "note"], rows)
    return held, reason


# --- main -------------------------------------------------------------------------------------


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def cleanup(bench: Bench | None, server: ServerThread | None, data_dir: Path, runtime: str) -> None:
    """Kill whatever this run still holds, stop the server, and make sure nothing of it
    stays on the host (a container node leaves running sandboxes for its next start, so
    they are killed through the API first, then by a node started on the same data)."""
    if bench is not None:
        left = dict(bench.tracker.items())
        with contextlib.suppress(Exception):
            left.update(dict(bench.listed()))
        if left:
            print(f"\ncleanup: killing {len(left)} sandboxes", flush=True)
            errs = bench.kill_all(list(left.items()))
            if errs:
                print(f"  kill errors: {errs[:3]}", flush=True)
    if server is not None:
        server.stop()
    node_dir = data_dir / "node"
    sandboxes = node_dir / "sandboxes"
    if runtime == "container" and sandboxes.is_dir() and os.listdir(sandboxes):
        print("cleanup: a node on the same data removes what is left", flush=True)
        from hearth.node.local import LocalNode

        async def sweep() -> None:
            async with LocalNode(node_dir, runtime="container"):
                pass

        try:
            asyncio.run(sweep())
        except Exception as e:  # noqa: BLE001
            print(f"  FAILED: {e}; leftovers under {data_dir}", flush=True)
            return
    if str(data_dir) in all_mount_tables():
        print(f"cleanup: mounts under {data_dir} remain; leaving it", flush=True)
        return
    shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=("container", "isolated"), default="container")
    parser.add_argument("--runs", type=int, default=100, help="create -> first output runs")
    parser.add_argument("--quick", action="store_true", help="few samples, for a smoke run")
    parser.add_argument("--idle", type=int, default=20, help="sandboxes for the memory phase")
    parser.add_argument("--capacity", type=int, default=CAPACITY_MAX, help="capacity bound")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/sandbox.py needs root (sandboxes need namespaces)", file=sys.stderr)
        return 2
    runs = 10 if args.quick else max(args.runs, 5)
    warmup = 1 if args.quick else 3
    bursts = 1 if args.quick else 3
    idle = 5 if args.quick else args.idle
    cap = min(30, args.capacity) if args.quick else args.capacity
    for name in ("E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DOMAIN", "E2B_API_URL", "E2B_DEBUG"):
        os.environ.pop(name, None)

    print(f"sandbox benchmark: runtime {args.runtime}, template {TEMPLATE}", flush=True)
    print(f"machine: {machine()}", flush=True)
    load_start = loadavg()
    print(f"load average at start: {load_start}", flush=True)

    from hearth.config import settings
    from hearth.node.guest.envd_bundle import ensure_bundle
    from hearth.node.local import build_builtin
    from hearth.serve import ServeOptions, ServerThread

    # As a user's `hearth serve` would: HEARTH_POOL_SIZE, else the default sizes.
    pool_sizes = dict(settings().pool_sizes) if args.runtime == "container" else {}
    print(f"warm pool: {pool_sizes or 'none'} (HEARTH_POOL_SIZE)", flush=True)
    base_pool = pool_sizes.get(TEMPLATE, 0)

    t = time.perf_counter()
    print(f"ensuring the {TEMPLATE!r} root and envd bundle (a first build takes minutes)...")
    ensure_bundle()
    build_builtin(TEMPLATE)
    print(f"  ready in {time.perf_counter() - t:.1f} s", flush=True)

    # The container runtime reaches sandboxes under the data directory by ids the host
    # does not know: every parent must be searchable by others (/var/tmp is, /root not).
    data_dir = Path(tempfile.mkdtemp(prefix="hearth-bench-", dir="/var/tmp"))
    data_dir.chmod(0o711)
    database_url = f"sqlite:///{data_dir}/hearth.db"
    probes = Probes()
    probes.install()
    server: ServerThread | None = None
    bench: Bench | None = None
    results: dict[str, object] = {}
    try:
        with interrupt_on_sigterm():
            server = ServerThread(
                ServeOptions(
                    host="127.0.0.1",
                    port=0,
                    data_dir=data_dir,
                    database_url=database_url,
                    runtime=args.runtime,
                    pool_sizes=pool_sizes,
                )
            )
            running = server.start()
            os.environ.update(running.environment())
            print(f"hearth serve at {running.api_url}, data in {data_dir}", flush=True)
            bench = Bench(
                args.runtime,
                data_dir,
                running.api_key,
                pool=sum(pool_sizes.values()),
                node=running.app.state.node,  # type: ignore[attr-defined]
            )
            bench.fill_pools()
            steps: list[tuple[str, Callable[[], object]]] = [
                ("latency", lambda: bench_latency(bench, probes, runs, warmup, base_pool)),
                ("latency_cold", lambda: bench_latency(bench, probes, runs, warmup, 0)),
                ("burst", lambda: bench_burst(bench, probes, bursts, BURST)),
                ("memory", lambda: bench_memory(bench, idle)),
                ("capacity", lambda: bench_capacity(bench, database_url, cap)),
            ]
            for name, step in steps:
                if name == "latency" and not base_pool:
                    continue
                try:
                    results[name] = step()
                except Exception as e:  # noqa: BLE001 - a benchmark reports, goes on
                    print(f"\n[{name}] FAILED: {type(e).__name__}: {e}"[:400], flush=True)
                    left = bench.tracker.items()
                    if left:
                        bench.kill_all(left)
            refs = bench_references(max(runs // 5, 5))
            print_table(
                "Reference: the pieces alone on this host (ms)", ["what", "n", "p50", "p95"], refs
            )
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", flush=True)
    finally:
        probes.uninstall()
        cleanup(bench, server, data_dir, args.runtime)

    summary = []
    for name, label in (("latency", "pooled"), ("latency_cold", "cold")):
        if not isinstance(lat := results.get(name), dict) or (name == "latency" and not base_pool):
            continue
        summary.append(
            [
                f"create -> first output p50 / p99, {label}",
                f"{lat['p50']:.0f} / {lat['p99']:.0f} ms",
                f"<= {AIMS['p50']:.0f} / {AIMS['p99']:.0f} ms",
                f"{verdict(lat['p50'] <= AIMS['p50'])} / {verdict(lat['p99'] <= AIMS['p99'])}",
            ]
        )
    if isinstance(burst := results.get("burst"), float):
        summary.append(
            [
                f"burst of {BURST}, all ready (median)",
                f"{burst:.0f} ms",
                f"<= {AIMS['burst']:.0f} ms",
                verdict(burst <= AIMS["burst"]),
            ]
        )
    if isinstance(mem := results.get("memory"), float):
        summary.append(
            [
                "host memory per idle sandbox (see table 3)",
                f"{mem:.1f} MiB",
                f"<= {AIMS['memory']:.0f} MiB",
                verdict(mem <= AIMS["memory"]),
            ]
        )
    if isinstance(capres := results.get("capacity"), tuple):
        held, reason = capres
        summary.append(
            [
                "idle sandboxes held",
                f"{held} ({reason})"[:90],
                f">= {AIMS['capacity']}",
                capacity_verdict(held, cap),
            ]
        )
    if summary:
        print_table("Summary", ["what", "measured", "aim", ""], summary)
    print(f"load average at start: {load_start}; at end: {loadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
