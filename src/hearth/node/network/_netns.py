"""Network namespaces pinned to files, and running code inside one.

A network namespace is a property of a thread, not of the process: `unshare` and `setns`
move only the calling thread. Each helper here therefore runs its work in a new thread
that ends afterwards, so no thread of the node's pools is ever left in a slot's
namespace, whatever fails. Netlink sockets (pyroute2's included) and subprocesses started
in that thread belong to the namespace the thread was in when they were made.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def in_new_thread(work: Callable[[], T]) -> T:
    """Run `work` in a thread of its own and return its result or raise its error."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as e:  # handed to the caller
            failure.append(e)

    thread = threading.Thread(target=run, name="hearth-netns")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def create_pinned(pin: Path, work: Callable[[int], T]) -> T:
    """Create a network namespace, pin it at `pin` (an existing empty file) and run
    `work(outer_ns_fd)` inside it; `outer_ns_fd` refers to the caller's namespace."""

    def run() -> T:
        outer = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            _check(
                _libc.mount(b"/proc/thread-self/ns/net", bytes(pin), None, MS_BIND, None),
                f"pin the network namespace at {pin}",
            )
            return work(outer)
        finally:
            os.close(outer)

    return in_new_thread(run)


def run_in(pin: Path, work: Callable[[], T]) -> T:
    """Run `work()` inside the namespace pinned at `pin`."""

    def run() -> T:
        fd = os.open(pin, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), f"setns({pin})")
        finally:
            os.close(fd)
        return work()

    return in_new_thread(run)


def enter(fd: int) -> None:
    """Move the calling thread into the network namespace `fd` refers to."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def is_pinned(pin: Path) -> bool:
    """True if `pin` has a network namespace mounted on it."""
    try:
        return os.stat(pin).st_dev != os.stat(pin.parent).st_dev
    except OSError:
        return False


def unpin(pin: Path) -> None:
    """Unmount the namespace from `pin` (it ends once nothing else holds it) and delete
    the file. Either may already be gone."""
    if _libc.umount2(bytes(pin), MNT_DETACH) < 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {pin}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        pin.unlink()
