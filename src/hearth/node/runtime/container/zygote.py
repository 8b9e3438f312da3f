"""The node's side of the envd zygote (envd/zygote.py): its process and its socket.

`EnvdZygote` starts the zygote at the first spawn, starts a new one when it finds it
dead, and stops it at `close()`. The envds it forked do not depend on it: they are the
children of their containers' inits, so a zygote that dies or is stopped leaves every
running sandbox as it was. The zygote reads the node's end of a pipe as its stdin and
exits when that closes, so that a node that dies takes its zygote along.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # its imports, on a loaded host
SPAWN_TIMEOUT = 30.0


class ZygoteError(RuntimeError):
    """The zygote could not be started, or could not start an envd."""


class EnvdZygote:
    """One zygote process for the node, listening on `socket_path`."""

    def __init__(
        self, interpreter: list[str], bundle: Path, target: str, socket_path: Path, log_path: Path
    ) -> None:
        """`interpreter`: the argv that runs the bundle's Python on the host; `target`:
        where containers mount the bundle; `log_path`: the zygote's own output."""
        self.interpreter = interpreter
        self.bundle = bundle
        self.target = target
        self.socket_path = socket_path
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running zygote's pid, or None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def spawn(self, request: dict[str, Any], output: int) -> int:
        """Have the zygote start an envd in the container `request` names (see
        envd/zygote.py), writing to the file `output`; returns envd's host pid.
        Blocking. A zygote found dead is started again first; a request it received
        is never sent twice (a second envd would meet the first): only one it died
        before reading goes to its successor."""
        data = json.dumps(request).encode()
        for attempt in (1, 2):
            process = self._ensure_running()
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            with conn:
                conn.settimeout(SPAWN_TIMEOUT)
                try:
                    conn.connect(str(self.socket_path))
                except (ConnectionRefusedError, FileNotFoundError):
                    if attempt == 2:
                        raise ZygoteError("the envd zygote does not accept requests") from None
                    self._forget_dead(process)
                    continue
                try:
                    socket.send_fds(conn, [data], [output])
                    answer = _read_line(conn)
                except ConnectionResetError:
                    # Unread: the zygote died before it took the request, so nothing
                    # was forked for it; a new zygote may take it.
                    if attempt == 2:
                        raise ZygoteError(
                            "the envd zygote died before it took the request"
                        ) from None
                    self._forget_dead(process)
                    continue
                except OSError as e:
                    raise ZygoteError(f"the envd zygote did not answer: {e}") from None
            if not answer:
                raise ZygoteError(
                    "the zygote's child that starts envd in the container exited without"
                    " an answer (killed, or out of the container's memory)"
                )
            reply = json.loads(answer)
            if "pid" not in reply:
                raise ZygoteError(f"the envd zygote could not start envd: {reply.get('error')}")
            return int(reply["pid"])
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop the zygote and remove its socket (idempotent). Blocking."""
        with self._lock:
            self._closed = True
            self._stop()

    # --- its process -----------------------------------------------------------------

    def _ensure_running(self) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._closed:
                raise ZygoteError("the node's envd zygote is closed")
            if self._process is not None and self._process.poll() is None:
                return self._process
            if self._process is not None:
                log.warning(
                    "the envd zygote (pid %d) exited (%s); starting a new one",
                    self._process.pid,
                    self._process.returncode,
                )
            self._stop()
            return self._start()

    def _forget_dead(self, process: subprocess.Popen[bytes]) -> None:
        """`process` dropped a request unread: end it, so that the next attempt starts
        another (unless one has replaced it already)."""
        with self._lock:
            if self._process is not process:
                return
            if process.poll() is None:
                log.warning("the envd zygote (pid %d) does not answer; replacing it", process.pid)
            self._stop()

    def _start(self) -> subprocess.Popen[bytes]:
        self.socket_path.unlink(missing_ok=True)  # a dead node's
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.socket_path))
            os.chmod(self.socket_path, 0o600)
            listener.listen(128)
            with open(self.log_path, "ab") as out:
                process = subprocess.Popen(
                    [
                        *self.interpreter,
                        "-I",
                        "-m",
                        "hearth.envd.zygote",
                        "--listen-fd",
                        str(listener.fileno()),
                        "--bundle",
                        str(self.bundle),
                        "--target",
                        self.target,
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=out,
                    pass_fds=[listener.fileno()],
                    # A Ctrl-C in the node's terminal is the node's to handle.
                    start_new_session=True,
                )
        except BaseException:
            listener.close()
            self.socket_path.unlink(missing_ok=True)
            raise
        listener.close()  # the zygote's now
        self._process = process
        assert process.stdout is not None
        if not _ready(process.stdout, START_TIMEOUT):
            self._stop()
            raise ZygoteError(f"the envd zygote did not start; see {self.log_path}")
        log.info("envd zygote started (pid %d)", process.pid)
        return process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self.socket_path.unlink(missing_ok=True)


def _ready(stdout: IO[bytes], timeout: float) -> bool:
    """Whether the zygote says `ready` on `stdout` within `timeout`."""
    readable, _, _ = select.select([stdout], [], [], timeout)
    return bool(readable) and stdout.readline().strip() == b"ready"


def _read_line(conn: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks).strip()


def spawn_request(config: dict[str, Any], init_pid: int, cgroups: list[str], port: int) -> dict:
    """The zygote's request for the envd of the container of `config` (its config.json)
    whose init is `init_pid`: envd gets what the OCI runtime gives the container's own
    process (environment, open files, capabilities, no new privileges, seccomp)."""
    process = config["process"]
    env = dict(item.split("=", 1) for item in process["env"])
    env.setdefault("HOME", "/root")  # as crun and runc set it for the container's root
    open_files = next(r["hard"] for r in process.get("rlimits", []) if r["type"] == "RLIMIT_NOFILE")
    return {
        "init_pid": init_pid,
        "cgroups": cgroups,
        "host": "0.0.0.0",
        "port": port,
        "env": env,
        "open_files": open_files,
        "capabilities": process["capabilities"]["bounding"],
        "no_new_privileges": bool(process.get("noNewPrivileges")),
        "seccomp": config["linux"].get("seccomp"),
    }


def zygote_born_envd(pid: int, init_pid: int) -> bool:
    """Whether `pid` is still the envd a zygote forked under the container's init
    `init_pid` (its child: a pid reused elsewhere is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return fields.get("PPid", "").strip() == str(init_pid) and "Z" not in fields.get("State", "")
