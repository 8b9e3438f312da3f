"""A cgroup v1 freezer group for one sandbox's processes: pause with memory for runtimes
whose sandboxes are plain process trees (the isolated runtime).

Everything a process forks stays in its group, so moving a sandbox's first process in
before it starts anything takes the whole sandbox. Frozen tasks take a SIGKILL only once
thawed: `kill()` signals, then thaws.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/freezer")
PARENT = "hearth-isolated"


class FreezerUnavailable(RuntimeError):
    pass


def available() -> bool:
    return (ROOT / "freezer.state").exists() or (ROOT / "tasks").exists()


class Freezer:
    """The freezer group `PARENT/name`, made on `create()`, removed on `remove()`."""

    def __init__(self, name: str) -> None:
        self.path = ROOT / PARENT / name

    def create(self, pid: int) -> None:
        """Make the group and move `pid` (with all its threads) into it."""
        if not available():
            raise FreezerUnavailable("no cgroup v1 freezer hierarchy on this host")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def freeze(self, timeout: float = 10.0) -> None:
        self._set("FROZEN", timeout)

    def thaw(self, timeout: float = 10.0) -> None:
        self._set("THAWED", timeout)

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def kill(self) -> None:
        """SIGKILL every process of the group and thaw it so that they die."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.thaw()

    def remove(self, timeout: float = 10.0) -> None:
        """rmdir the group once its last task has left (and the parent if empty)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()

    def _set(self, state: str, timeout: float) -> None:
        (self.path / "freezer.state").write_text(f"{state}\n")
        deadline = time.monotonic() + timeout
        # FREEZING until every task has stopped.
        while (self.path / "freezer.state").read_text().strip() != state:
            if time.monotonic() > deadline:
                raise TimeoutError(f"freezer {self.path} did not reach {state}")
            time.sleep(0.005)
