"""Which host CPUs a container sandbox runs on: `cpu_count` of them, the least taken.

The CPU quota (bundle.py) caps how much CPU time a sandbox uses, but not how many CPUs
its programs see: `nproc`, Go's GOMAXPROCS, the JVM, Node's `availableParallelism()`
and `make -j$(nproc)` count the CPUs of `sched_getaffinity`, which lxcfs cannot change.
A sandbox of N vCPUs is therefore also confined to N of the host's CPUs (its cpuset),
as a VM's N vCPUs would be all it sees. The price is that a pinned sandbox cannot
borrow an idle CPU beyond its own; placement spreads sandboxes so that each CPU holds
as few as possible: at each launch the CPUs the fewest pinned sandboxes hold, counted
host-wide from the cgroups of every node's sandboxes (`cgroup_parent/*`) plus the
launches this process placed whose cgroups the runtime has not made yet. A sandbox of
as many vCPUs as the host has, or more, is not pinned.
"""

from __future__ import annotations

import glob
import os
import threading
from collections import Counter
from pathlib import Path

from hearth.node.usage import CGROUP_ROOT


class CpuPlacement:
    def __init__(self, cgroup_parent: str, cgroup_root: Path = CGROUP_ROOT) -> None:
        self._parent = cgroup_parent
        self._root = cgroup_root
        self._lock = threading.Lock()
        self._placed: dict[str, frozenset[int]] = {}  # by sandbox id, until released

    def place(self, sandbox_id: str, count: int) -> str | None:
        """The CPUs (a cpuset list, "0-1,3") sandbox `sandbox_id` of `count` vCPUs runs
        on from its launch on; None: all of them (no cpuset here, or no fewer CPUs
        than `count`)."""
        hierarchy = self._hierarchy()
        with self._lock:
            self._placed.pop(sandbox_id, None)
            if hierarchy is None:
                return None
            host = self._host_cpus(hierarchy)
            if count >= len(host):
                return None
            held = self._held(hierarchy)
            held.update(self._placed)
            held.pop(sandbox_id, None)
            load = Counter(cpu for cpus in held.values() if cpus < host for cpu in cpus)
            chosen = frozenset(sorted(host, key=lambda cpu: (load[cpu], cpu))[:count])
            self._placed[sandbox_id] = chosen
        return format_cpus(chosen)

    def release(self, sandbox_id: str) -> None:
        """Forget a placement (the sandbox's container and cgroups are gone)."""
        with self._lock:
            self._placed.pop(sandbox_id, None)

    def _hierarchy(self) -> tuple[Path, str] | None:
        """The cpuset hierarchy and its name of the effective CPUs file: cgroup v1's
        own mount, else v2's unified tree if it has the controller."""
        v1 = self._root / "cpuset"
        if os.path.ismount(v1):
            return v1, "cpuset.effective_cpus"
        try:
            controllers = (self._root / "cgroup.controllers").read_text().split()
        except OSError:
            return None
        return (self._root, "cpuset.cpus.effective") if "cpuset" in controllers else None

    def _host_cpus(self, hierarchy: tuple[Path, str]) -> frozenset[int]:
        """The CPUs sandboxes may have: their parent cgroup's, else the root's."""
        tree, effective = hierarchy
        for directory in (tree / self._parent, tree):
            try:
                cpus = parse_cpus((directory / effective).read_text())
            except OSError:
                continue
            if cpus:
                return cpus
        return frozenset(os.sched_getaffinity(0))

    def _held(self, hierarchy: tuple[Path, str]) -> dict[str, frozenset[int]]:
        """The CPUs of every sandbox cgroup on the host, by its name."""
        tree, _ = hierarchy
        held = {}
        for path in glob.glob(f"{tree}/{self._parent}/*/cpuset.cpus"):
            try:
                held[Path(path).parent.name] = parse_cpus(Path(path).read_text())
            except (OSError, ValueError):
                continue
        return held


def parse_cpus(text: str) -> frozenset[int]:
    """The CPUs of a cpuset list ("0-2,5")."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


def format_cpus(cpus: frozenset[int]) -> str:
    """A cpuset list of `cpus`, in ranges."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and ranges[-1][1] == cpu - 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
