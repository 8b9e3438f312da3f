"""Run one envd isolated from the host: its own user, mount, pid and UTS namespaces and root.

`IsolatedEnvd` is the smallest sandbox: no network namespace (envd listens on the host's
loopback), no cgroup limits, no seccomp. It exists to run and test envd against a real
root filesystem without touching the host; the container runtime builds on the same
parts. Inside, uid 0 is the host's uid 0 (identity map), so it is not a security
boundary against a hostile workload.

What it holds while running, each released through one ExitStack in reverse order:
a temporary directory (overlay upper/work dirs, the merged mount point, envd's log), the
pipes to the launcher, the launcher process (see `_launcher.py`), and a pidfd of envd,
which is PID 1 of the new pid namespace. Killing that PID 1 makes the kernel kill every
process in the namespace; the mounts live in a private mount namespace that disappears
with its last process.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Self

from hearth.node.guest.envd_bundle import ensure_bundle, envd_command, envd_environment
from hearth.node.guest.envd_client import ENVD_TARGET

ENVD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAUNCHER = Path(__file__).with_name("_launcher.py")
# Enough ids for the root's system users, `user` (1000) and what users add.
ID_MAP = "0 0 65536\n"


class IsolatedEnvdError(RuntimeError):
    """envd could not be started in isolation; the message carries its output."""


class IsolatedEnvd:
    """envd on 127.0.0.1:`port` in fresh namespaces over a throwaway copy of a root.

    Use as a context manager, or call `start()` and `stop()`; `stop()` is idempotent and
    also undoes a `start()` that failed half-way.
    """

    def __init__(
        self,
        root: str | list[Path] = "busybox",
        port: int = 0,
        *,
        cache_dir: Path | None = None,
        bundle_dir: Path | None = None,
        stderr: int | IO[bytes] | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        """`port` 0 picks a free one. envd's output goes to `stderr` if given, else to a
        log file that errors quote."""
        # A built-in root's name ("busybox", "debian"), or a template's layers.
        self.root = root
        self._port = port
        self._cache_dir = cache_dir
        self._bundle_dir = bundle_dir
        self._stderr = stderr
        self._start_timeout = start_timeout
        self._releases = contextlib.ExitStack()
        self._started = False
        self._state_dir: Path | None = None
        self._log: Path | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        self._envd_pid: int | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        """envd's pid on the host while it runs (it is PID 1 inside)."""
        return self._envd_pid

    @property
    def state_dir(self) -> Path | None:
        """The host directory of this run's upper and work layers and envd's log (the
        path stays set after stop(), when the directory is gone)."""
        return self._state_dir

    @property
    def root_dir(self) -> Path | None:
        """The sandbox's root as the host can read it (through envd's /proc entry)."""
        return Path(f"/proc/{self._envd_pid}/root") if self._envd_pid else None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Self:
        """Start envd and return once its /health answers 204."""
        if self._started:
            raise RuntimeError("IsolatedEnvd.start() called twice")
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill everything in the sandbox, remove its mounts and files. Safe to repeat."""
        self._envd_pid = None
        self._releases.close()

    def wait(self, timeout: float | None = None) -> int:
        """Block until envd's sandbox ends by itself; return its exit status.

        Raises subprocess.TimeoutExpired after `timeout` seconds.
        """
        if self._launcher is None:
            raise RuntimeError("IsolatedEnvd is not running")
        return self._launcher.wait(timeout)

    def _layers(self) -> list[Path]:
        if not isinstance(self.root, str):
            return list(self.root)
        from hearth.template.layers import LayerStore, root_layer

        store = LayerStore.of_cache(self._cache_dir)
        return [store.path(root_layer(store, self.root))]

    def _start(self) -> None:
        if os.geteuid() != 0:
            raise PermissionError("IsolatedEnvd needs root (it maps uids and mounts)")
        bundle = ensure_bundle(self._bundle_dir)
        lower = ":".join(str(p) for p in reversed(self._layers()))
        if self._port == 0:
            self._port = _free_port()

        tmp = self._state_dir = Path(tempfile.mkdtemp(prefix="hearth-envd-"))
        self._releases.callback(shutil.rmtree, tmp)
        for name in ("upper", "work", "root"):
            (tmp / name).mkdir()
        output = self._stderr
        if output is None:
            self._log = tmp / "envd.log"
            output = self._releases.enter_context(self._log.open("wb"))

        control_r, control_w = os.pipe()
        # A file object, so the early release and _stop_launcher may both close it.
        control = self._releases.enter_context(os.fdopen(control_w, "wb", buffering=0))
        report_r, report_w = os.pipe()
        self._releases.callback(os.close, report_r)
        spec = {
            "control_fd": control_r,
            "report_fd": report_w,
            "lower": str(lower),
            "upper": str(tmp / "upper"),
            "work": str(tmp / "work"),
            "merged": str(tmp / "root"),
            "bundle": str(bundle),
            "bundle_target": ENVD_TARGET,
            "argv": self._argv(),
            "env": {**envd_environment(ENVD_TARGET), "PATH": ENVD_PATH},
        }
        try:
            launcher = subprocess.Popen(
                [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(spec)],
                pass_fds=(control_r, report_w),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                # Ctrl-C in a terminal must reach only us; stop() takes the sandbox down.
                start_new_session=True,
            )
        finally:
            os.close(control_r)
            os.close(report_w)
        self._launcher = launcher
        self._releases.callback(_stop_launcher, launcher, control)

        reports = _Reports(report_r, launcher, self._log)
        reports.expect("U")
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{launcher.pid}/{name}").write_text(ID_MAP)
        control.write(b"1")
        envd_pid = int(reports.expect("P"))
        try:
            pidfd = os.pidfd_open(envd_pid)
        except ProcessLookupError:
            launcher.wait(timeout=10)
            raise IsolatedEnvdError(
                f"envd exited ({launcher.returncode}) at once{_quote(self._log)}"
            ) from None
        self._releases.callback(_kill_and_wait, pidfd)
        self._envd_pid = envd_pid
        self._wait_healthy(launcher)

    def _argv(self) -> list[str]:
        return envd_command(ENVD_TARGET, "127.0.0.1", self._port)

    def _wait_healthy(self, launcher: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self._start_timeout
        last = "no answer"
        while True:
            code = launcher.poll()
            if code is not None:
                raise IsolatedEnvdError(
                    f"envd exited ({code}) before answering /health{_quote(self._log)}"
                )
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=1)
                try:
                    conn.request("GET", "/health")
                    status = conn.getresponse().status
                finally:
                    conn.close()
                if status == 204:
                    return
                last = f"status {status}"
            except OSError as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise IsolatedEnvdError(
                    f"envd did not answer GET {self.url}/health with 204 within "
                    f"{self._start_timeout:.0f} s (last: {last}){_quote(self._log)}"
                )
            time.sleep(0.01)


class _Reports:
    """Reads the launcher's progress lines, failing clearly if it dies first."""

    def __init__(self, fd: int, launcher: subprocess.Popen[bytes], log: Path | None) -> None:
        self._fd, self._launcher, self._log = fd, launcher, log
        self._buffer = b""

    def expect(self, tag: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            if self._buffer[:1] == tag.encode():
                # "U" is a single byte; "P<pid>" ends with a newline.
                if tag == "U":
                    self._buffer = self._buffer[1:]
                    return ""
                line, sep, rest = self._buffer.partition(b"\n")
                if sep:
                    self._buffer = rest
                    return line[1:].decode()
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(remaining, 0))
            chunk = os.read(self._fd, 64) if ready else b""
            if not chunk:
                code = self._launcher.poll()
                why = "timed out" if code is None else f"exited ({code})"
                raise IsolatedEnvdError(
                    f"the namespace launcher {why} before {tag!r}{_quote(self._log)}"
                )
            self._buffer += chunk


def _kill_and_wait(pidfd: int) -> None:
    """SIGKILL envd (PID 1: the kernel then kills the whole pid namespace) and wait."""
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        # A pidfd turns readable once the process has exited, and PID 1 exits only after
        # every other process of its namespace is gone.
        ready, _, _ = select.select([pidfd], [], [], 10)
        if not ready:
            raise IsolatedEnvdError("envd's pid namespace did not exit within 10 s")
    finally:
        os.close(pidfd)


def _stop_launcher(launcher: subprocess.Popen[bytes], control: IO[bytes]) -> None:
    # EOF on the control pipe tells the launcher to kill envd; it then exits itself.
    control.close()
    try:
        launcher.wait(timeout=10)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quote(log: Path | None) -> str:
    if log is None:
        return ""
    try:
        text = log.read_text(errors="replace").strip()
    except OSError:
        return ""
    return f"; its output:\n{text[-4000:]}" if text else "; it wrote nothing"
