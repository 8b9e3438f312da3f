"""Blocks of host user ids for container sandboxes, claimed host-wide.

Each sandbox maps its ids 0..65535 to a block of its own on the host. Two node processes
on one host (a `hearth serve` and a `hearth template build`, two nodes, a test server
beside a user's) must never hand out the same block, or two sandboxes would share host
ids. So a claim is a file per block in a host-wide registry (/run: a reboot, which ends
every container, empties it), made under a lock and naming its owner: the sandbox's
directory and the node process. A claim whose process is gone and whose directory never
came (a node killed mid-create) is stale and may be taken; one whose directory exists
belongs to that sandbox (adopted after a restart, or paused to its files) until freed.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from hearth.node.disk.cache import locked

REGISTRY = Path("/run/hearth/id-blocks")


class IdBlockError(RuntimeError):
    pass


class IdBlocks:
    def __init__(self, sandboxes_dir: Path, count: int, registry: Path = REGISTRY) -> None:
        self._sandboxes_dir = sandboxes_dir
        self._count = count
        self._registry = registry

    def claim(self, sandbox_id: str, block: int | None = None) -> int:
        """A free block for `sandbox_id` (or the given one, which must be free or its)."""
        self._registry.mkdir(parents=True, exist_ok=True, mode=0o700)
        owner = {"dir": str(self._sandboxes_dir / sandbox_id), **_process()}
        with locked(self._registry / ".lock"):
            if block is not None:
                if not self._free_for(block, owner["dir"]):
                    raise IdBlockError(f"id block {block} is another sandbox's")
                self._write(block, owner)
                return block
            for candidate in range(self._count):
                if self._free_for(candidate, owner["dir"]):
                    self._write(candidate, owner)
                    return candidate
        raise IdBlockError("no free block of user ids on this host")

    def free(self, block: int) -> None:
        with locked(self._registry / ".lock"):
            path = self._registry / str(block)
            claim = _read(path)
            if claim is not None and Path(claim["dir"]).parent == self._sandboxes_dir:
                path.unlink(missing_ok=True)

    def _free_for(self, block: int, directory: str) -> bool:
        claim = _read(self._registry / str(block))
        if claim is None or claim.get("dir") == directory:
            return True
        owner = claim.get("dir")
        return not _alive(claim) and not (owner and Path(owner).exists())

    def _write(self, block: int, owner: dict) -> None:
        path = self._registry / str(block)
        tmp = path.with_name(f".{block}.tmp")
        tmp.write_text(json.dumps(owner))
        tmp.rename(path)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: nobody's we can tell, so stale


def _process() -> dict:
    return {"pid": os.getpid(), "start": _start_time(os.getpid())}


def _start_time(pid: int) -> str | None:
    """When the process started (its pid may be reused by another later)."""
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    return None


def _alive(claim: dict) -> bool:
    pid, start = claim.get("pid"), claim.get("start")
    return isinstance(pid, int) and start is not None and _start_time(pid) == start
