"""Saved states: a sandbox's disk, and optionally its whole VM, captured to start many.

`MicroVMDriver.snapshot` writes one into `data_dir/microvm/saved/NAME`:

- `disk.qcow2`: a copy of the sandbox's overlay as it was, backed by what the overlay
  was backed by (a template snapshot's disk, or the disk of the saved state the sandbox
  was started from); each sandbox started from it has its own overlay over it,
- `memory.state`: with memory, the whole VM (RAM and devices) as QEMU's migration wrote
  it,
- `saved.json`: the machine, the source's artifact, whether memory was kept, and the
  token envd holds in that memory (the restored envd's first /init must show it).

It is written under a hidden name and renamed into place once complete. A saved state
that is no longer wanted is marked `forgotten` and deleted once no qcow2 here is backed
by its disk: sandboxes started from it (running or paused: a filesystem-only resume
boots over that chain) and saved states captured from those.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from hearth.node.runtime.microvm.vmm import VmmError

META = "saved.json"
DISK = "disk.qcow2"
MEMORY_STATE = "memory.state"
FORGOTTEN = "forgotten"
PARTIAL_PREFIX = "."  # a capture in progress (or one a dead node left)
QCOW2_MAGIC = b"QFI\xfb"
MAX_CHAIN = 32


@dataclass(frozen=True)
class SavedState:
    directory: Path
    machine: dict
    artifact: dict | None
    memory: bool
    envd_token: str | None = None

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def disk(self) -> Path:
        return self.directory / DISK

    @property
    def memory_state(self) -> Path:
        return self.directory / MEMORY_STATE


def valid_name(name: str) -> bool:
    return bool(name) and name.isascii() and name.isalnum() and name.islower()


def write(directory: Path, state: SavedState) -> None:
    """Write the metadata of the state being captured in `directory` (blocking)."""
    data = asdict(state)
    del data["directory"]
    path = directory / META
    path.write_text(json.dumps(data))
    path.chmod(0o600)  # it holds a token


def read(directory: Path) -> SavedState | None:
    """The complete saved state in `directory`, or None (blocking)."""
    try:
        data = json.loads((directory / META).read_text())
        state = SavedState(directory=directory, **data)
    except (OSError, ValueError, TypeError):
        return None
    if not state.disk.is_file() or (state.memory and not state.memory_state.is_file()):
        return None
    return state


def forgotten(directory: Path) -> bool:
    return (directory / FORGOTTEN).exists()


def forget(directory: Path) -> None:
    """Mark the state in `directory` for deletion (kept across a node's restart)."""
    (directory / FORGOTTEN).touch()


def copy_disk(source: Path, target: Path) -> None:
    """A copy of the qcow2 image `source` at `target`, backed by the same image (named by
    its absolute path, so the copy works from another directory). Blocking; the image
    must not change meanwhile (its QEMU stopped, or none)."""
    done = subprocess.run(
        ["cp", "--sparse=always", str(source), str(target)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise VmmError(f"copying {source.name} failed: {done.stderr.strip()}")
    named = _backing_name(target)
    if named is None or Path(named).is_absolute():
        return
    backing = (source.parent / named).resolve()
    done = subprocess.run(
        ["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(backing), str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise VmmError(f"qemu-img rebase failed: {done.stderr.strip()}")


def backing_chain(image: Path) -> list[Path]:
    """The images `image` is backed by, nearest first, as absolute paths. Read from the
    qcow2 headers (no qemu-img: no lock on an image a running QEMU holds)."""
    chain: list[Path] = []
    current = image
    while len(chain) < MAX_CHAIN:
        named = _backing_name(current)
        if named is None:
            break
        current = (current.parent / named).resolve()
        chain.append(current)
    return chain


def _backing_name(image: Path) -> str | None:
    try:
        with open(image, "rb") as f:
            header = f.read(20)
            if len(header) < 20 or header[:4] != QCOW2_MAGIC:
                return None
            offset = int.from_bytes(header[8:16], "big")
            size = int.from_bytes(header[16:20], "big")
            if not offset or not size:
                return None
            f.seek(offset)
            return f.read(size).decode()
    except (OSError, UnicodeDecodeError):
        return None


def sweep_partial(saved_dir: Path) -> list[str]:
    """Remove the captures a dead node left half-written."""
    removed = []
    for entry in saved_dir.iterdir():
        if entry.name.startswith(PARTIAL_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def collect(saved_dir: Path, overlays: list[Path]) -> list[str]:
    """Delete the forgotten saved states that neither one of `overlays` (the sandboxes'
    disks) nor another saved state's disk is backed by; a state that goes frees the
    ones its disk was backed by. Blocking; the caller keeps new users out meanwhile."""
    states = {
        d.name: d
        for d in saved_dir.iterdir()
        if not d.name.startswith(PARTIAL_PREFIX) and d.is_dir()
    }
    doomed = {name for name, d in states.items() if forgotten(d)}
    removed: list[str] = []
    while doomed:
        used: set[Path] = set()
        for image in [*overlays, *(d / DISK for d in states.values())]:
            used.update(backing_chain(image))
        free = sorted(n for n in doomed if (states[n] / DISK).resolve() not in used)
        if not free:
            break
        for name in free:
            shutil.rmtree(states.pop(name), ignore_errors=True)
            removed.append(name)
        doomed.difference_update(free)
    return removed
