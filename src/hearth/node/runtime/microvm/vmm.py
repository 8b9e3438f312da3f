"""One QEMU `-M microvm` process and its QMP connection.

A `Vmm` owns its process (started in a network slot's namespace through `nsenter`, in
its own session so it outlives a restarting node), its QMP socket and its serial log.
The machine is always assembled from the same device model, so a template's device
state loads into any clone: virtio-blk (the qcow2 overlay), virtio-net on a tap device,
a serial port to a file. Only the backing of guest RAM differs:

- `template`: a file on /dev/shm, shared (the snapshot's RAM),
- `clone`: the same file mapped private (copy-on-write over the template's pages),
- `private`: anonymous memory (cold boots of a paused disk, full-state restores).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from qemu.qmp import QMPClient

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
TAP = "tap0"
QMP_SOCKET = "qmp.sock"
SERIAL_LOG = "serial.log"
GUEST_MAC = "02:68:74:00:00:15"
KERNEL_ARGS = (
    "console=ttyS0 panic=-1 quiet tsc_early_khz=2000000 nokaslr mitigations=off"
    " 8250.nr_uarts=1 cryptomgr.notests random.trust_cpu=on audit=0 no_timer_check"
    " lpj=4000000"
)
# TCG's translation cache is allocated up front at 1 GiB by default; guest code of an
# idle sandbox needs a small part of it, and every clone pays for what it touches.
TCG_CACHE_MB = 64
MAX_BANDWIDTH = 64 << 30  # bytes/s: no throttle

Memory = Literal["template", "clone", "private"]


class VmmError(RuntimeError):
    """QEMU refused, crashed or timed out; the message carries its log's tail."""


@dataclass(frozen=True)
class Machine:
    """What a VM is made of (everything but its files)."""

    kernel: Path
    initramfs: Path
    cmdline: str
    cpu_count: int
    memory_mb: int
    accel: str  # "kvm" or "tcg"


class Vmm:
    """A QEMU process. `launch()`, then `connect()`; `kill()` is idempotent."""

    def __init__(self, directory: Path, netns: Path | None = None, name: str | None = None):
        self.directory = directory  # QEMU's working directory: its files are named in it
        self.netns = netns
        # In QEMU's command line (-name), so a restarted node can tell its QEMUs apart.
        self.name = name or directory.name
        self.qmp: QMPClient | None = None
        self.pid: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._watching: tuple[asyncio.AbstractEventLoop, int] | None = None

    @property
    def qmp_path(self) -> Path:
        return self.directory / QMP_SOCKET

    @property
    def log_path(self) -> Path:
        return self.directory / "qemu.log"

    @property
    def serial_path(self) -> Path:
        return self.directory / SERIAL_LOG

    # --- process ---------------------------------------------------------------------

    def argv(
        self,
        machine: Machine,
        disk: Path | str,
        *,
        memory: Memory,
        mem_path: Path | None = None,
        incoming: str | None = None,
    ) -> list[str]:
        m = machine
        if m.accel == "kvm":
            accel = ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
        else:
            accel = ["-accel", f"tcg,thread=multi,tb-size={TCG_CACHE_MB}", "-cpu", "max"]
        size = f"{m.memory_mb}M"
        if memory == "private":
            backend = f"memory-backend-ram,id=mem,size={size}"
        else:
            assert mem_path is not None
            share = "on" if memory == "template" else "off"
            backend = f"memory-backend-file,id=mem,size={size},mem-path={mem_path},share={share}"
        argv = [
            QEMU,
            "-name", f"hearth-{self.name}",
            "-M", "microvm,memory-backend=mem",
            *accel,
            "-smp", str(m.cpu_count),
            "-m", size,
            "-object", backend,
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-kernel", str(m.kernel),
            "-initrd", str(m.initramfs),
            "-append", m.cmdline,
            "-serial", f"file:{SERIAL_LOG}",
            "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
            "-drive", f"id=root,file={disk},format=qcow2,if=none,cache=unsafe,discard=unmap",
            "-device", "virtio-blk-device,drive=root",
            "-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=net0,mac={GUEST_MAC}",
        ]  # fmt: skip
        if incoming:
            argv += ["-incoming", incoming]
        return argv

    def launch(self, argv: list[str]) -> None:
        """Start QEMU (blocking, quick) in `directory`. It runs in its own session: a node
        that stops or restarts leaves it running, and a Ctrl-C in the node's terminal does
        not reach it."""
        if self.netns is not None:
            argv = ["nsenter", f"--net={self.netns}", "--", *argv]
        with open(self.log_path, "ab") as out:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=self.directory,
                start_new_session=True,
            )
        # nsenter execs QEMU in the same process: this pid is QEMU's.
        self.pid = self._process.pid
        self._pidfd = os.pidfd_open(self.pid)

    def adopt(self, pid: int) -> None:
        """Take hold of a QEMU process a previous node process started."""
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)

    def alive(self) -> bool:
        if self._pidfd is None:
            return False
        ready, _, _ = select.select([self._pidfd], [], [], 0)
        return not ready

    def exited(self) -> asyncio.Future[None]:
        """A future done when the process ends (crash detection); `unwatch()` stops it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        fd = self._pidfd
        if fd is None:
            future.set_result(None)
            return future
        self.unwatch()

        def ready() -> None:
            self.unwatch()
            if not future.done():
                future.set_result(None)

        loop.add_reader(fd, ready)
        self._watching = (loop, fd)
        return future

    def unwatch(self) -> None:
        if self._watching is not None:
            loop, fd = self._watching
            self._watching = None
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)

    def kill(self) -> None:
        """SIGKILL QEMU and wait for it to end (blocking)."""
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            select.select([self._pidfd], [], [], 10)
            os.close(self._pidfd)
            self._pidfd = None
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=10)
            self._process = None
        self.qmp_path.unlink(missing_ok=True)

    def log_tail(self) -> str:
        parts = []
        for path in (self.log_path, self.serial_path):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").strip()
                if text:
                    parts.append(f"{path.name}:\n{text[-2000:]}")
        return ("\n" + "\n".join(parts)) if parts else ""

    # --- QMP -------------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> QMPClient:
        deadline = time.monotonic() + timeout
        last: object = "no socket"
        while True:
            if not self.alive():
                raise VmmError(f"QEMU exited before its QMP socket answered{self.log_tail()}")
            if self.qmp_path.exists():
                client = QMPClient(self.name)
                try:
                    # QEMU serves one QMP client at a time: while another holds it, the
                    # greeting never comes, so the wait is bounded too.
                    left = max(0.1, deadline - time.monotonic())
                    await asyncio.wait_for(client.connect(self._qmp_socket()), left)
                    self.qmp = client
                    return client
                except Exception as e:  # not listening yet, or taken
                    last = e
                    with contextlib.suppress(Exception):
                        await client.disconnect()
            if time.monotonic() > deadline:
                raise VmmError(f"QMP did not answer within {timeout:.0f} s: {last!r}")
            await asyncio.sleep(0.002)

    def _qmp_socket(self) -> socket.socket:
        """A socket connected to QMP. Through the directory's file descriptor: the full
        path may exceed the 107 bytes a unix socket address can hold."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        directory = os.open(self.directory, os.O_PATH | os.O_CLOEXEC)
        try:
            sock.connect(f"/proc/self/fd/{directory}/{QMP_SOCKET}")
        except BaseException:
            sock.close()
            raise
        finally:
            os.close(directory)
        sock.setblocking(False)
        return sock

    async def disconnect(self) -> None:
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                await self.qmp.disconnect()
            self.qmp = None

    async def execute(self, command: str, arguments: dict | None = None) -> object:
        assert self.qmp is not None, "connect() first"
        return await self.qmp.execute(command, arguments)

    async def ignore_shared(self, on: bool) -> None:
        await self.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "x-ignore-shared", "state": on}]},
        )

    async def save(self, path: Path, timeout: float = 120.0) -> None:
        """Stop the guest and write its state to `path` (RAM too unless shared)."""
        await self.execute("stop")
        # Migration is throttled to 128 MiB/s by default, meant for a live guest sharing
        # the network; a stopped guest saved to a local file should go at disk speed.
        await self.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
        await self.execute("migrate", {"uri": f"exec:cat > {_quote(path)}"})
        await self._migration_done(timeout)

    async def load(self, path: Path, timeout: float = 60.0) -> None:
        """Load state from `path` into a VMM started with `-incoming defer`, then run."""
        await self.execute("migrate-incoming", {"uri": f"exec:cat {_quote(path)}"})
        await self._migration_done(timeout)
        await self.execute("cont")

    async def go_on(self, timeout: float = 30.0) -> None:
        """Run the guest again after `save` or `stop`, a failed or cancelled save too: a
        migration still going is cancelled first. After a completed one, `cont` also
        takes the disks back (QEMU lets go of them for a migration's destination)."""
        deadline = time.monotonic() + timeout
        while True:
            info = await self.execute("query-migrate")
            status = info.get("status") if isinstance(info, dict) else None
            if status in (None, "none", "completed", "failed", "cancelled"):
                break
            if status != "cancelling":
                await self.execute("migrate_cancel")
            if time.monotonic() > deadline:
                raise VmmError(f"migration not cancelled within {timeout:.0f} s ({status})")
            await asyncio.sleep(0.01)
        await self.execute("cont")

    async def _migration_done(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            info = await self.execute("query-migrate")
            if not isinstance(info, dict):
                info = {}
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise VmmError(f"migration {status}: {info.get('error-desc', '')}{self.log_tail()}")
            if time.monotonic() > deadline:
                raise VmmError(f"migration not done within {timeout:.0f} s (status {status})")
            if not self.alive():
                raise VmmError(f"QEMU exited during migration{self.log_tail()}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def quit(self) -> None:
        """Ask QEMU to exit, then make sure it has (blocking parts in a thread)."""
        self.unwatch()
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.execute("quit"), 5)
        await self.disconnect()
        await asyncio.to_thread(self.kill)


def _quote(path: Path) -> str:
    text = str(path)
    if any(c in text for c in "'\"\\ $`;&|<>"):
        raise ValueError(f"unsafe path for QEMU's exec: URI: {text!r}")
    return text
