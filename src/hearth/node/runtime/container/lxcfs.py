"""The node's lxcfs daemon: what a container sandbox reads of its own memory and CPUs.

The kernel's /proc/meminfo, /proc/cpuinfo, /proc/stat, /proc/uptime, /proc/loadavg, ...
describe the host whatever the reader's limits, so `free`, `top`, `nproc` and whatever
sizes itself from them (JVMs, compilers, `make -j`) see the host's 24 GiB in a 512 MiB
sandbox. lxcfs is a FUSE filesystem whose files answer each read for the reader's
cgroup: its memory limit and usage, as many CPUs as its quota and cpuset allow
(`--enable-cfs`) with their use, the start of its pid namespace (uptime), its load
(`--enable-loadavg`). Each sandbox's launch binds
them over the kernel's, read-only (`bundle.host_view`); what it costs a launch is those
binds. What `nproc` counts (the CPU affinity) is the cpuset's: see cpus.py.

One daemon per node, on a mount directory of its own (`data_dir/lxcfs/mnt`), with its
own pid file, never the host's shared /var/lib/lxcfs or /run/lxcfs.pid: two nodes on
one host, or a test server beside a user's, each run theirs. Its command line names
the directory through a link in Hearth's host-wide /run/hearth/lxcfs (one per node
directory), so that the host's processes that name a node's data directory stay its
sandboxes' (launchers and runtimes: what the leak checks count).

Lifecycle. `start()` adopts the daemon a previous node process left on the directory
(the sandboxes it adopts are bound to that one) or starts one, then watches it through a
pidfd. A FUSE daemon that exits leaves its mounts dead, binds included: reads of them
fail with ENOTCONN ("Transport endpoint is not connected"), and a new daemon's mount
does not replace them (lxcfs's maintainers: a killed lxcfs cannot be recovered from
but by restarting the containers, lxc/lxcfs#204; only a SIGUSR1 reload keeps them). So
when it exits the node logs it, starts it again, and `on_change` redoes the binds in
every running sandbox with the new mount API (`_launcher.py --rebind`, the approach of
lxc/lxcfs#583): the new daemon's, or none while none is up, so that the sandbox reads
the host's files, as where lxcfs is not installed, never dead ones. `close()` unmounts
and stops it; `detach()` leaves it running, for the sandboxes bound to it and the node
process that adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hearth.node.runtime._threads import to_thread_to_the_end
from hearth.node.runtime.container.bundle import LXCFS_FILES

log = logging.getLogger(__name__)

ALIASES = Path("/run/hearth/lxcfs")
SEARCH_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
START_TIMEOUT = 10.0
STEADY = 60.0  # a daemon that ran this long was not failing: its restarts count anew
MAX_RESTARTS = 3
OWNER = "owner"  # "TOKEN PID": the node object that watches the daemon, and its process
MNT_DETACH = 0x2


@dataclass(frozen=True)
class LxcfsView:
    """A live lxcfs mount and the files of `bundle.LXCFS_FILES` it serves."""

    mount: Path
    files: tuple[str, ...]


def find_binary() -> str | None:
    return shutil.which("lxcfs") or shutil.which("lxcfs", path=SEARCH_PATH)


class Lxcfs:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()
        self.mount = self.directory / "mnt"
        key = hashlib.sha256(str(self.directory).encode()).hexdigest()[:16]
        self.alias = ALIASES / key
        # Blocking, run in a thread after the daemon came back or could not: redo the
        # binds of every running sandbox (ContainerRuntime.rebind_lxcfs).
        self.on_change: Callable[[], None] | None = None
        self.pid: int | None = None
        self.adopted = False  # start() found it running
        self._view: LxcfsView | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._token = secrets.token_hex(8)
        self._started_at = 0.0
        self._restarts = 0
        self._recovery: asyncio.Task[None] | None = None
        self._started = False
        self._done = False  # closed or detached: no more watching

    @property
    def view(self) -> LxcfsView | None:
        """What a launch binds now; None while no daemon is up (the host's view)."""
        return self._view

    @property
    def recovering(self) -> bool:
        """True from the daemon's exit until it is back and the sandboxes are rebound
        (or it could not come back and they were unbound)."""
        return self._recovery is not None and not self._recovery.done()

    async def start(self) -> None:
        """Adopt or start the daemon and watch it. Without lxcfs (not installed, or it
        cannot start) this logs why and the sandboxes see the host's files."""
        self._started = True
        try:
            up = await to_thread_to_the_end(self._bring_up)
        except Exception:
            log.exception(
                "lxcfs could not start: container sandboxes see the host's memory and CPUs in /proc"
            )
            up = False
        if up:
            self._watch()

    async def close(self) -> None:
        """Unmount and stop the daemon, and remove its directory and link."""
        await self._stop_watching()
        if self._started:
            await to_thread_to_the_end(self._release)

    async def detach(self) -> None:
        """Stop watching; the daemon and its mount stay, for the sandboxes bound to it
        and the node process that adopts them."""
        await self._stop_watching()

    # --- the daemon -------------------------------------------------------------------

    def _argv(self, binary: str) -> list[str]:
        return [
            binary,
            "--foreground",
            "--enable-cfs",
            "--enable-loadavg",
            "--enable-pidfd",
            "--pidfile",
            str(self.alias / "lxcfs.pid"),
            str(self.alias / "mnt"),
        ]

    def _bring_up(self) -> bool:
        """Adopt the daemon serving the directory, or start one; False (logged) if
        none can run."""
        binary = find_binary()
        if binary is None:
            log.warning(
                "lxcfs is not installed: container sandboxes see the host's memory and "
                "CPUs in /proc (apt-get install lxcfs)"
            )
            return False
        self.mount.mkdir(parents=True, exist_ok=True)
        self._link()
        pid = self._serving()
        self.adopted = pid is not None
        if pid is None:
            self._clear()
            pid = self._spawn(binary)
            if pid is None:
                return False
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            log.warning("lxcfs (pid %d) exited as it started: see %s", pid, self._log_path)
            return False
        self.pid = pid
        self._started_at = time.monotonic()
        files = tuple(f for f in LXCFS_FILES if (self.mount / f.lstrip("/")).exists())
        self._view = LxcfsView(self.mount, files)
        (self.directory / OWNER).write_text(f"{self._token} {os.getpid()}")
        log.info("lxcfs %s (pid %d) on %s", "adopted" if self.adopted else "up", pid, self.mount)
        return True

    def _link(self) -> None:
        """The host-wide name of the directory the daemon's command line uses."""
        ALIASES.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if os.readlink(self.alias) == str(self.directory):
                return
        new = self.alias.with_name(f".{self.alias.name}.{self._token}")
        os.symlink(self.directory, new)
        os.replace(new, self.alias)

    @property
    def _log_path(self) -> Path:
        return self.directory / "lxcfs.log"

    def _recorded_pid(self) -> int | None:
        """The pid in the daemon's pid file if that process is lxcfs on this directory."""
        try:
            pid = int((self.directory / "lxcfs.pid").read_text())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        ours = os.path.basename(argv[0]) == b"lxcfs" and str(self.alias / "mnt").encode() in argv
        return pid if ours else None

    def _serving(self) -> int | None:
        """The pid of a live daemon that answers on the mount, if there is one."""
        pid = self._recorded_pid()
        return pid if pid is not None and self._mounted() and self._answers() else None

    def _mounted(self) -> bool:
        return _mount_type(self.mount) == "fuse.lxcfs"

    def _answers(self) -> bool:
        try:
            os.stat(self.mount / "proc/meminfo")
        except OSError:
            return False
        return True

    def _clear(self) -> None:
        """Remove what a daemon that no longer serves left: itself, a dead mount."""
        pid = self._recorded_pid()
        if pid is not None:
            _kill(pid)
        self._unmount()

    def _unmount(self) -> None:
        for _ in range(16):  # stacked mounts, one at a time
            if _mount_type(self.mount) is None:
                return
            if _libc().umount2(str(self.mount).encode(), MNT_DETACH) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"umount {self.mount}: {os.strerror(errno)}")

    def _spawn(self, binary: str) -> int | None:
        with open(self._log_path, "ab") as out:
            process = subprocess.Popen(
                self._argv(binary),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd="/",
                # It outlives a node that detaches, as its sandboxes do.
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not (self._mounted() and self._answers()):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                log.warning(
                    "lxcfs did not start (exit %s): container sandboxes see the host's "
                    "memory and CPUs in /proc%s",
                    process.returncode,
                    _tail(self._log_path),
                )
                self._unmount()
                return None
            time.sleep(0.002)
        # As the packaged service runs it: the OOM killer must not take the daemon
        # every sandbox reads its limits from.
        with contextlib.suppress(OSError):
            Path(f"/proc/{process.pid}/oom_score_adj").write_text("-1000")
        self._process = process
        return process.pid

    def _release(self) -> None:
        self._unmount()
        pid = self._recorded_pid()  # whoever started it
        if pid is not None:
            # SIGKILL: a SIGTERM'd lxcfs waits up to 5 s for its loadavg thread, and
            # unmounted it has nothing left to do.
            _kill(pid)
        self._reap()
        self.pid = None
        self._view = None
        with contextlib.suppress(OSError):
            if os.readlink(self.alias) == str(self.directory):
                os.unlink(self.alias)
        if _mount_type(self.mount) is None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _reap(self) -> int | None:
        """The exit status of the daemon this object started, once it has exited."""
        if self._process is None:
            return None
        code = self._process.wait()
        self._process = None
        return code

    # --- watching ---------------------------------------------------------------------

    def _watch(self) -> None:
        assert self._pidfd is not None
        asyncio.get_running_loop().add_reader(self._pidfd, self._exited)

    def _unwatch(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def _stop_watching(self) -> None:
        self._done = True
        if self._recovery is not None:
            await asyncio.gather(self._recovery, return_exceptions=True)
        self._unwatch()

    def _exited(self) -> None:
        assert self._pidfd is not None
        code = self._reap()
        if code is None:  # adopted: perhaps from an earlier node object of this process
            code = _reap_child(self._pidfd)
        self._unwatch()
        self._view = None
        pid = self.pid
        if self._done:
            return
        if not self._owns():
            log.info("lxcfs (pid %s) exited; another node watches %s", pid, self.directory)
            return
        log.warning(
            "lxcfs (pid %s) exited (%s; its log: %s): container sandboxes see the host's "
            "/proc until it is back",
            pid,
            code,
            self._log_path,
        )
        self._recovery = asyncio.get_running_loop().create_task(self._recover())

    def _owns(self) -> bool:
        """Whether restarting the daemon is this object's to do: it watches it, or the
        node that took it over (another process on the directory) has gone. None is
        when the directory is gone (its node closed)."""
        try:
            token, _, pid = (self.directory / OWNER).read_text().partition(" ")
            other = int(pid)
        except (OSError, ValueError):
            return False
        if token == self._token:
            return True
        # Another node object's, in this process (one dropped without close) or in a
        # live other one: that one restarts it.
        return other != os.getpid() and not Path(f"/proc/{other}").exists()

    async def _recover(self) -> None:
        steady = time.monotonic() - self._started_at >= STEADY
        self._restarts = 1 if steady else self._restarts + 1
        up = False
        try:
            if self._restarts > MAX_RESTARTS:
                log.error(
                    "lxcfs exited %d times in a row soon after starting: no more restarts; "
                    "container sandboxes see the host's memory and CPUs in /proc",
                    self._restarts,
                )
            else:
                up = await to_thread_to_the_end(self._bring_up)
            if up:
                self._watch()
            if self.on_change is not None:
                await to_thread_to_the_end(self.on_change)
        except Exception:
            log.exception("recovering from lxcfs's exit")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount_type(path: Path) -> str | None:
    """The filesystem type of the topmost mount on `path` (in this mount namespace)."""
    target = str(path)
    found = None
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields, _, rest = line.partition(" - ")
            point = fields.split(" ")[4]
            if _unescape(point) == target:
                found = rest.split(" ", 1)[0]
    return found


def _unescape(field: str) -> str:
    """A mountinfo path field as the path it names (spaces and such are octal escapes)."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def _kill(pid: int) -> None:
    """SIGKILL `pid` and wait for it to exit (reaping it if it is this process's child)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], 10)
        _reap_child(pidfd)
    finally:
        os.close(pidfd)


def _reap_child(pidfd: int) -> int | None:
    """The exit status of the process of `pidfd` if it is an exited child of this
    process (reaping it), else None. Through the pidfd: never another process."""
    try:
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return None
    return result.si_status if result is not None else None


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return f"; its log ends:\n{text[-1500:]}" if text else ""
