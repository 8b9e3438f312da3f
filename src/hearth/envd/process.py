"""The process.Process service: start, attach to, feed and signal the sandbox's processes.

Each process gets one pump thread that polls its output pipes (or PTY master) and a
pidfd, fans output out to whoever is attached at that moment, and publishes exactly one
end event once the process has exited and what it wrote has been drained. Output
produced while nobody is attached is dropped, as E2B's envd does.
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import select
import signal
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import TypedDict

from hearth.envd import logs, paths, rpc
from hearth.envd.context import Context
from hearth.envd.errors import RpcError

STD_CHUNK = 32 << 10
PTY_CHUNK = 16 << 10
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FINISHED_KEPT = 256  # ended processes remembered so a late Connect still gets their end
SIGNALS = {"SIGNAL_SIGKILL": signal.SIGKILL, "SIGNAL_SIGTERM": signal.SIGTERM, 9: 9, 15: 15}
# How Go's os.ProcessState names signals; E2B's envd reports these strings.
GO_SIGNAL_NAMES = {
    1: "hangup",
    2: "interrupt",
    3: "quit",
    4: "illegal instruction",
    5: "trace/breakpoint trap",
    6: "aborted",
    7: "bus error",
    8: "floating point exception",
    9: "killed",
    10: "user defined signal 1",
    11: "segmentation fault",
    12: "user defined signal 2",
    13: "broken pipe",
    14: "alarm clock",
    15: "terminated",
}
_END = object()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def end_event(returncode: int) -> dict:
    """The end event Go's envd sends for a wait status (see spec §3.5)."""
    if returncode >= 0:
        status = f"exit status {returncode}"
        end = {"exitCode": returncode, "exited": True, "status": status}
        if returncode:
            end["error"] = status
        return end
    name = GO_SIGNAL_NAMES.get(-returncode, f"signal {-returncode}")
    status = f"signal: {name}"
    return {"exitCode": -1, "exited": False, "status": status, "error": status}


class Process:
    """One started process, its pipes and the clients attached to its output."""

    def __init__(self, popen: subprocess.Popen, config: dict, tag: str | None, pty_fd: int | None):
        self.popen = popen
        self.pid = popen.pid
        self.config = config
        self.tag = tag
        self.pty_fd = pty_fd
        self.stdin = popen.stdin
        self.stdin_lock = threading.Lock()
        self.subscribers: list[queue.SimpleQueue] = []
        self.lock = threading.Lock()
        self.forwarding = True
        self.end: dict | None = None
        self.ended = threading.Event()
        self.timer: threading.Timer | None = None

    def info(self) -> dict:
        info = {"config": self.config, "pid": self.pid}
        if self.tag is not None:
            info["tag"] = self.tag
        return info

    def subscribe(self) -> queue.SimpleQueue:
        q: queue.SimpleQueue = queue.SimpleQueue()
        with self.lock:
            if self.end is not None:
                q.put(self.end)
                q.put(_END)
            else:
                self.subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.SimpleQueue) -> None:
        with self.lock:
            if q in self.subscribers:
                self.subscribers.remove(q)

    def publish(self, event: dict) -> None:
        with self.lock:
            for q in self.subscribers:
                q.put(event)

    def finish(self, end: dict) -> None:
        with self.lock:
            self.end = {"end": end}
            for q in self.subscribers:
                q.put(self.end)
                q.put(_END)
            self.subscribers.clear()
        self.ended.set()

    def signal(self, signum: int) -> None:
        if signum in (signal.SIGKILL, signal.SIGTERM):
            self.forwarding = False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def write_input(self, data: bytes, to_pty: bool) -> None:
        if self.pty_fd is not None:
            if not to_pty:
                raise RpcError(
                    "failed_precondition",
                    "tty assigned to process — input should be written to the pty, not the stdin",
                )
            os.write(self.pty_fd, data)
            return
        if to_pty:
            raise RpcError(
                "failed_precondition",
                "tty not assigned to process — input should be written to the stdin, not the tty",
            )
        with self.stdin_lock:
            if self.stdin is None:
                raise RpcError("failed_precondition", "stdin not enabled or closed")
            try:
                self.stdin.write(data)
                self.stdin.flush()
            except OSError as e:
                raise RpcError(
                    "internal", f"error writing to stdin of process '{self.pid}': {e}"
                ) from e

    def close_stdin(self) -> None:
        if self.pty_fd is not None:
            raise RpcError(
                "failed_precondition",
                "cannot close stdin for PTY process — send Ctrl+D (0x04) instead",
            )
        with self.stdin_lock:
            if self.stdin is not None:
                try:
                    self.stdin.close()
                finally:
                    self.stdin = None


class ProcessTable:
    """The processes started through the API, running and recently ended."""

    def __init__(self) -> None:
        self.running: dict[int, Process] = {}
        self.finished: OrderedDict[int, Process] = OrderedDict()
        self.lock = threading.Lock()

    def add(self, proc: Process) -> None:
        with self.lock:
            self.running[proc.pid] = proc
            self.finished.pop(proc.pid, None)

    def retire(self, proc: Process) -> None:
        with self.lock:
            if self.running.get(proc.pid) is proc:
                del self.running[proc.pid]
            self.finished[proc.pid] = proc
            while len(self.finished) > FINISHED_KEPT:
                self.finished.popitem(last=False)

    def select(self, selector: dict | None, include_finished: bool = False) -> Process:
        selector = selector or {}
        with self.lock:
            candidates = list(self.running.values())
            if include_finished:
                candidates += list(self.finished.values())
        if "pid" in selector:
            pid = int(selector["pid"])
            for proc in candidates:
                if proc.pid == pid:
                    return proc
            raise RpcError("not_found", f"process with pid {pid} not found")
        if "tag" in selector:
            tag = selector["tag"]
            for proc in candidates:
                if proc.tag == tag:
                    return proc
            raise RpcError("not_found", f"process with tag {tag} not found")
        raise RpcError("invalid_argument", "invalid input type")


TABLE = ProcessTable()
# Held while a process is spawned and registered, so that the orphan reaper never takes
# the exit status of a child that is ours but not yet in TABLE.
SPAWN_LOCK = threading.Lock()
_child_spawned = threading.Event()


def reap_orphans() -> None:
    """Reap the orphans re-parented to envd when it is the sandbox's PID 1.

    Runs in a thread of the server itself, so no second process is needed. The children
    envd started are left to their pump threads, which need their exit status.
    """
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:  # no children at all: wait until there are
            _child_spawned.wait(1)
            _child_spawned.clear()
            continue
        except InterruptedError:
            continue
        if info is None:
            continue
        with SPAWN_LOCK:
            with TABLE.lock:
                ours = TABLE.running.get(info.si_pid)
            if ours is None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(info.si_pid, 0)
                continue
        ours.ended.wait()  # its pump thread reaps it and publishes the end


def _pump(proc: Process, table: ProcessTable) -> None:
    """Forward output until the process exits, drain what it left, publish its end."""
    fds: dict[int, str] = {}
    if proc.pty_fd is not None:
        fds[proc.pty_fd] = "pty"
    else:
        stdout, stderr = proc.popen.stdout, proc.popen.stderr
        assert stdout is not None and stderr is not None, "started without a PTY: both piped"
        fds[stdout.fileno()] = "stdout"
        fds[stderr.fileno()] = "stderr"
    budget = logs.OutputBudget()
    # A PTY's output is a terminal's, not lines: E2B's envd does not log it either.
    lines = {
        fd: logs.OutputLines(proc.pid, stream, budget)
        for fd, stream in fds.items()
        if stream != "pty"
    }
    pidfd = os.pidfd_open(proc.pid)
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    open_fds = set(fds)

    def read(fd: int) -> bool:
        """Forward one chunk from fd; True only when there was data."""
        try:
            data = os.read(fd, PTY_CHUNK if fds[fd] == "pty" else STD_CHUNK)
        except BlockingIOError:
            return False
        except OSError:  # EIO on a PTY master once the slave side is gone
            data = b""
        if not data:
            poller.unregister(fd)
            open_fds.discard(fd)
            return False
        if proc.forwarding:
            proc.publish({"data": {fds[fd]: _b64(data)}})
        if fd in lines:
            lines[fd].write(data)
        return True

    try:
        exited = False
        while not exited:
            for fd, _ in poller.poll():
                if fd == pidfd:
                    exited = True
                elif fd in open_fds:
                    read(fd)
        # The process is gone: take what is still buffered, but do not wait for
        # descendants that keep the pipes open (Go's cmd.Wait closes them too).
        for fd in list(open_fds):
            os.set_blocking(fd, False)
            while fd in open_fds and read(fd):
                pass
        returncode = proc.popen.wait()
    finally:
        os.close(pidfd)
        if proc.timer:
            proc.timer.cancel()
        for stream in (proc.popen.stdout, proc.popen.stderr):
            if stream:
                stream.close()
        if proc.pty_fd is not None:
            os.close(proc.pty_fd)
        with proc.stdin_lock:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                proc.stdin = None
    for out in lines.values():
        out.flush()
    table.retire(proc)
    end = end_event(returncode)
    # Logged before the end is published: who sees the end finds its line in the logs.
    logs.emit(
        "info",
        logs.PROCESS,
        f"Process with pid {proc.pid} ended",
        event_type="process_end",
        pid=proc.pid,
        exit_code=end["exitCode"],
        exited=end["exited"],
        status=end["status"],
        **({"error": end["error"]} if "error" in end else {}),
        process_result=end,
    )
    proc.finish(end)


def _environment(ctx: Context, user, request_envs: dict) -> dict[str, str]:
    path = ":".join(p for p in os.environ.get("PATH", DEFAULT_PATH).split(":") if "hearth" not in p)
    env = {"PATH": path or DEFAULT_PATH, "HOME": user.home, "USER": user.name, "LOGNAME": user.name}
    env.update(ctx.state.env_vars)
    env.update(request_envs or {})
    return env


def _spawn(ctx: Context, req: dict) -> Process:
    config = req.get("process") or {}
    cmd = config.get("cmd") or ""
    args = list(config.get("args") or [])
    user = ctx.user
    assert user is not None, "an RPC's context always has its caller's user"
    cwd = paths.expand(config.get("cwd") or "", user, ctx.state.default_workdir)
    if not os.path.isdir(cwd):
        raise RpcError("invalid_argument", f"cwd '{cwd}' does not exist")
    env = _environment(ctx, user, config.get("envs") or {})
    pty = req.get("pty")
    ids: _Identity = {}
    own_groups = set(os.getgroups()) or {os.getgid()}
    if (user.uid, user.gid) != (os.getuid(), os.getgid()) or set(user.groups) != own_groups:
        # Switching identity makes CPython fork instead of vfork (costly for a parent
        # of envd's size), so only ask for it when the identity really changes.
        ids = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
    pty_fd = None
    try:
        if pty is not None:
            size = pty.get("size") or {}
            pty_fd, slave = os.openpty()
            _set_winsize(pty_fd, int(size.get("rows") or 24), int(size.get("cols") or 80))
            try:
                popen = subprocess.Popen(
                    [cmd, *args],
                    cwd=cwd,
                    env=env,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    start_new_session=True,
                    preexec_fn=_controlling_tty(),
                    **ids,
                )
            finally:
                os.close(slave)
            os.set_blocking(pty_fd, False)
        else:
            stdin = subprocess.PIPE if req.get("stdin", True) else subprocess.DEVNULL
            popen = subprocess.Popen(
                [cmd, *args],
                cwd=cwd,
                env=env,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                **ids,
            )
    except (OSError, subprocess.SubprocessError) as e:
        if pty_fd is not None:
            os.close(pty_fd)
        raise RpcError("internal", f"error starting process '{' '.join([cmd, *args])}': {e}") from e
    fields = {"tag": req["tag"]} if req.get("tag") is not None else {}
    logs.emit(
        "info",
        logs.PROCESS,
        f"Process with pid {popen.pid} started",
        event_type="process_start",
        pid=popen.pid,
        command=" ".join([cmd, *args]),
        cmd=cmd,
        args=args,
        cwd=cwd,
        user=user.name,
        pty=pty is not None,
        **fields,
    )
    return Process(popen, config, req.get("tag"), pty_fd)


class _Identity(TypedDict, total=False):
    """Who Popen starts the process as, when that is not envd's own identity."""

    user: int
    group: int
    extra_groups: list[int]


def _controlling_tty():
    """What the child runs before exec to make the PTY its controlling terminal, so
    that job control and Ctrl-C work. Bound here, in the parent: the child of a threaded
    process must not import anything."""
    import fcntl
    import functools
    import termios

    return functools.partial(fcntl.ioctl, 0, termios.TIOCSCTTY, 0)


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _events(ctx: Context, proc: Process, q: queue.SimpleQueue) -> Iterator[dict]:
    """Stream `start`, then output and the end event, with keepalives in silences.

    The call's deadline (Connect-Timeout-Ms) ends the stream with `deadline_exceeded`,
    as connect-go does, even when the lifetime kill at that same moment produced an end
    event: the caller asked for a result within the deadline and did not get one.
    """
    interval = ctx.keepalive_interval()
    deadline = ctx.deadline
    try:
        yield {"event": {"start": {"pid": proc.pid}}}
        while True:
            wait = interval
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0))
            try:
                event = q.get(timeout=wait)
            except queue.Empty:
                event = None
            if deadline is not None and time.monotonic() >= deadline:
                raise RpcError("deadline_exceeded", "context deadline exceeded")
            if event is None:
                yield {"event": {"keepalive": {}}}
            elif event is _END:
                return
            else:
                yield {"event": event}
    finally:
        proc.unsubscribe(q)


def start(ctx: Context, req: dict) -> Iterator[dict]:
    with SPAWN_LOCK:
        proc = _spawn(ctx, req)
        TABLE.add(proc)
    _child_spawned.set()
    q = proc.subscribe()
    if ctx.deadline is not None:
        # The process lives until the call's deadline, the same instant that ends the
        # stream, so the stream always reports the deadline rather than the kill.
        lifetime = max(ctx.deadline - time.monotonic(), 0)
        proc.timer = threading.Timer(lifetime, proc.signal, (signal.SIGKILL,))
        proc.timer.daemon = True
        proc.timer.start()
    threading.Thread(target=_pump, args=(proc, TABLE), name=f"pump-{proc.pid}", daemon=True).start()
    return _events(ctx, proc, q)


def connect(ctx: Context, req: dict) -> Iterator[dict]:
    proc = TABLE.select(req.get("process"), include_finished=True)
    return _events(ctx, proc, proc.subscribe())


def list_processes(ctx: Context, req: dict) -> dict:
    with TABLE.lock:
        procs = list(TABLE.running.values())
    return {"processes": [p.info() for p in procs]}


def update(ctx: Context, req: dict) -> dict:
    proc = TABLE.select(req.get("process"))
    size = (req.get("pty") or {}).get("size")
    if size is not None:
        if proc.pty_fd is None:
            raise RpcError("internal", "error resizing tty: tty not assigned to process")
        try:
            _set_winsize(proc.pty_fd, int(size.get("rows") or 0), int(size.get("cols") or 0))
        except OSError as e:
            raise RpcError("internal", f"error resizing tty: {e}") from e
    return {}


def _input(proc: Process, payload: dict) -> None:
    if "pty" in payload:
        proc.write_input(base64.b64decode(payload["pty"]), to_pty=True)
    elif "stdin" in payload:
        proc.write_input(base64.b64decode(payload["stdin"]), to_pty=False)


def send_input(ctx: Context, req: dict) -> dict:
    proc = TABLE.select(req.get("process"))
    _input(proc, req.get("input") or {})
    return {}


def stream_input(ctx: Context, requests: Iterator[dict]) -> dict:
    proc = None
    for message in requests:
        if "start" in message:
            proc = TABLE.select((message["start"] or {}).get("process"))
        elif "data" in message:
            if proc is None:
                raise RpcError("failed_precondition", "the first message must select a process")
            _input(proc, (message["data"] or {}).get("input") or {})
    return {}


def send_signal(ctx: Context, req: dict) -> dict:
    proc = TABLE.select(req.get("process"))
    signum = SIGNALS.get(req.get("signal"))
    if signum is None:
        raise RpcError("invalid_argument", f"invalid signal: {req.get('signal')}")
    proc.signal(signum)
    if signum == signal.SIGKILL:
        # Killing is synchronous for the caller: once it returns, List no longer shows it.
        proc.ended.wait(5)
    return {}


def close_stdin(ctx: Context, req: dict) -> dict:
    TABLE.select(req.get("process")).close_stdin()
    return {}


METHODS = {
    "List": rpc.unary(list_processes, "process.ListRequest", "process.ListResponse"),
    "Start": rpc.server_stream(start, "process.StartRequest", "process.StartResponse"),
    "Connect": rpc.server_stream(connect, "process.ConnectRequest", "process.ConnectResponse"),
    "Update": rpc.unary(update, "process.UpdateRequest", "process.UpdateResponse"),
    "SendInput": rpc.unary(send_input, "process.SendInputRequest", "process.SendInputResponse"),
    "StreamInput": rpc.client_stream(
        stream_input, "process.StreamInputRequest", "process.StreamInputResponse"
    ),
    "SendSignal": rpc.unary(send_signal, "process.SendSignalRequest", "process.SendSignalResponse"),
    "CloseStdin": rpc.unary(close_stdin, "process.CloseStdinRequest", "process.CloseStdinResponse"),
}
