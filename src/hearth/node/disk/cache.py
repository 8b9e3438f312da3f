"""Build-once directories: made in a temporary sibling, stamped, renamed into place."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

STAMP_NAME = ".hearth-stamp"


def progress(message: str) -> None:
    """Tell the person waiting what a slow step is doing (stderr, one line)."""
    print(f"hearth: {message}", file=sys.stderr, flush=True)


def read_stamp(directory: Path) -> str | None:
    """The stamp a finished build left in `directory`, or None."""
    try:
        return (directory / STAMP_NAME).read_text().strip()
    except OSError:
        return None


def ensure_dir(dest: Path, stamp: str, build: Callable[[Path], None]) -> Path:
    """Return `dest`, first (re)building it with `build(tmp)` unless its stamp is `stamp`.

    Readers never see a half-built directory: `build` fills a fresh temporary sibling,
    which is renamed to `dest` only once complete. A lock file serialises builders (two
    test workers, a CLI and a node), and the stamp is checked again under it so only
    one of them does the work.
    """
    if read_stamp(dest) == stamp:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(dest.parent / f".{dest.name}.lock"):
        if read_stamp(dest) == stamp:
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            # mkdtemp makes 0700; the result is read by unprivileged users in sandboxes.
            tmp.chmod(0o755)
            build(tmp)
            (tmp / STAMP_NAME).write_text(stamp + "\n")
            _swap_in(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _swap_in(new: Path, dest: Path) -> None:
    """Put `new` at `dest`. A previous `dest` is moved aside, and deleted only once no
    sandbox has it mounted: a running envd imports lazily from its bundle."""
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        dest.rename(old / dest.name)
    new.rename(dest)
    prune_replaced(dest)


def prune_replaced(dest: Path) -> None:
    """Delete the replaced versions of `dest` that no mount namespace still uses."""
    remove_unmounted(list(dest.parent.glob(f".{dest.name}.old-*")))


def remove_unmounted(directories: list[Path]) -> None:
    """Delete each of `directories` that no mount namespace uses (as a mount's source or
    an overlay's layer)."""
    if not directories:
        return
    mounts = _all_mountinfo()
    for directory in directories:
        # A bind mount's source shows in mountinfo under its current (renamed) path.
        if f"/{directory.name}/" not in mounts:
            shutil.rmtree(directory, ignore_errors=True)


def _all_mountinfo() -> str:
    """The mount tables of every mount namespace on the host, concatenated."""
    seen: set[str] = set()
    tables = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            namespace = os.readlink(f"/proc/{entry}/ns/mnt")
            if namespace in seen:
                continue
            seen.add(namespace)
            with open(f"/proc/{entry}/mountinfo") as f:
                tables.append(f.read())
        except OSError:
            continue  # the process ended, or is not ours to read
    return "".join(tables)


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
