"""The node's envd zygote: one pre-imported process that forks every container's envd.

Run on the host from the envd bundle's interpreter, one per node:
`python -I -m hearth.envd.zygote --listen-fd N --bundle DIR --target PATH`. It imports
envd and everything envd serves, freezes that heap (`gc.freeze()`, so the forks share
its pages instead of touching them at the first collection), and then answers on the
unix socket it was handed, one request per connection: a JSON object (below) with
envd's output file as an SCM_RIGHTS descriptor; the answer is one JSON line,
`{"pid": HOST_PID}` or `{"error": "..."}`.

It stays single-threaded (fork copies one thread), never waits for a child: the child
it forks writes the answer itself, and SIGCHLD reaps it. Each child:

1. opens every namespace file of the container's init first (after the mount
   namespace, `/proc` is the container's) and a host `/proc` to find envd in later,
2. moves itself into the container's cgroups (while still the host's root),
3. joins the namespaces the host owns (the network slot's) while it still has the
   host's privilege, then the rest in the order cgroup, user, ipc, uts, net, pid, mnt,
   taking uid and gid 0 right after the user namespace (else it is `nobody` there);
   joining mnt also puts its root and working directory at the container's root,
4. forks: that child is in the container's pid namespace, and forks envd, then exits,
   so that envd is re-parented to the container's init (`pid1.py`), which ends the
   container when envd ends,
5. finds envd's host pid among the init's children, answers, and exits.

envd itself then takes the container's environment, limits, no-new-privileges bit,
seccomp filter and capabilities (what the OCI runtime gives a container's process),
points its imports at the bundle as the container mounts it (`--target`), and serves.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import gc
import importlib
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time
from typing import Any

# Joined in this order (after any the host owns, see `_join_order`): the user namespace
# before those it owns, pid before the fork that enters it, mnt last as it changes the
# root the others' files are found from.
NAMESPACES = ("cgroup", "user", "ipc", "uts", "net", "pid", "mnt")
# Everything envd loads lazily: a module first imported inside the container would be
# read from the bundle there rather than shared with the zygote.
PRELOAD = (
    "hearth.envd.server",
    "hearth.envd.api",
    "hearth.envd.connect",
    "hearth.envd.binary_codec",
    "hearth.envd.process",
    "hearth.envd.filesystem",
    "hearth.envd.files",
    "hearth.envd.watch",
    "inotify_simple",
    "ctypes",
    "datetime",
    "email.utils",
    "fcntl",
    "grp",
    "gzip",
    "hashlib",
    "hmac",
    "pty",
    "pwd",
    "shutil",
    "struct",
    "termios",
    "urllib.parse",
    "zlib",
)
NS_GET_USERNS = 0xB701  # ioctl_ns(2): the user namespace that owns a namespace
MAX_REQUEST = 1 << 20
REQUEST_TIMEOUT = 10.0

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000
SCMP_CMP_MASKED_EQ = 7
SCMP_FLTATR_CTL_NNP = 3
SCMP_ARCHES = {
    "SCMP_ARCH_X86_64": 0xC000003E,
    "SCMP_ARCH_X86": 0x40000003,
    "SCMP_ARCH_X32": 0x4000003E,
}
SCMP_OPS = {"SCMP_CMP_MASKED_EQ": SCMP_CMP_MASKED_EQ, "SCMP_CMP_EQ": 4}
# capability(7) numbers, by the names OCI configs use.
CAPABILITY_NUMBERS = {
    name: number
    for number, name in enumerate(
        (
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETPCAP",
            "CAP_LINUX_IMMUTABLE",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_BROADCAST",
            "CAP_NET_ADMIN",
            "CAP_NET_RAW",
            "CAP_IPC_LOCK",
            "CAP_IPC_OWNER",
            "CAP_SYS_MODULE",
            "CAP_SYS_RAWIO",
            "CAP_SYS_CHROOT",
            "CAP_SYS_PTRACE",
            "CAP_SYS_PACCT",
            "CAP_SYS_ADMIN",
            "CAP_SYS_BOOT",
            "CAP_SYS_NICE",
            "CAP_SYS_RESOURCE",
            "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG",
            "CAP_MKNOD",
            "CAP_LEASE",
            "CAP_AUDIT_WRITE",
            "CAP_AUDIT_CONTROL",
            "CAP_SETFCAP",
            "CAP_MAC_OVERRIDE",
            "CAP_MAC_ADMIN",
            "CAP_SYSLOG",
            "CAP_WAKE_ALARM",
            "CAP_BLOCK_SUSPEND",
            "CAP_AUDIT_READ",
            "CAP_PERFMON",
            "CAP_BPF",
            "CAP_CHECKPOINT_RESTORE",
        )  # fmt: skip
    )
}

_libc = ctypes.CDLL(None, use_errno=True)


class SpawnError(RuntimeError):
    """A child could not join the container or start envd there."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def _prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


# --- the zygote ------------------------------------------------------------------------


def serve(listener: socket.socket, bundle: str, target: str) -> None:
    """Answer spawn requests on `listener` until stdin (the node's pipe) closes."""
    zygote = os.getpid()
    seccomp = _libseccomp()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is not listener:
                return  # the node is gone: so is the reason to fork envds
            with contextlib.suppress(BlockingIOError, InterruptedError):
                conn, _ = listener.accept()
                with conn:
                    _fork_one(conn, zygote, bundle, target, seccomp)


def _fork_one(
    conn: socket.socket, zygote: int, bundle: str, target: str, seccomp: ctypes.CDLL | None
) -> None:
    conn.settimeout(REQUEST_TIMEOUT)
    try:
        data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 4)
        request = json.loads(data)
    except (OSError, ValueError) as e:
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"error": f"bad request: {e}"}).encode() + b"\n")
        return
    try:
        if os.fork() == 0:
            code = 1
            try:
                pid = _join_and_start(request, fds, zygote, bundle, target, seccomp)
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                code = 0
            except BaseException as e:  # noqa: BLE001 - answered, and the child ends
                with contextlib.suppress(BaseException):
                    conn.sendall(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode() + b"\n")
            finally:
                os._exit(code)
    finally:
        for fd in fds:
            os.close(fd)


def _reap(_signum: int, _frame: object) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _libseccomp() -> ctypes.CDLL | None:
    """libseccomp, loaded here on the host (the container may not have it)."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


# --- a child: into the container -------------------------------------------------------


def _join_and_start(
    request: dict[str, Any],
    fds: list[int],
    zygote: int,
    bundle: str,
    target: str,
    seccomp: ctypes.CDLL | None,
) -> int:
    """Join the container of `request["init_pid"]` and start envd there; its host pid."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # A zygote killed mid-fork takes its child along rather than leave it in the
    # container's cgroups.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote:
        raise SpawnError("the zygote is gone")
    if request.get("seccomp") and seccomp is None:
        raise SpawnError("a seccomp filter is asked for and libseccomp is not on this host")
    init = int(request["init_pid"])
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    pidfd = os.pidfd_open(init)
    namespaces = {
        name: os.open(f"{init}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
        for name in NAMESPACES
    }
    # Still the process whose files were opened (its pid not reused meanwhile).
    signal.pidfd_send_signal(pidfd, 0)
    for directory in request["cgroups"]:
        with open(os.path.join(directory, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    for name in _join_order(namespaces):
        _check(_libc.setns(namespaces[name], 0), f"setns to the {name} namespace of {init}")
        if name == "user":
            with contextlib.suppress(PermissionError):  # setgroups may be denied there
                os.setgroups([])
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
    os.chdir("/")
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        # In the container's pid namespace: envd's parent for a moment only.
        code = 1
        try:
            os.close(read_end)
            envd = os.fork()
            if envd == 0:
                os.close(write_end)
                _become_envd(request, fds[0] if fds else None, bundle, target, seccomp)
            os.write(write_end, str(envd).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        inner = pipe.read().decode()
    _, status = os.waitpid(middle, 0)
    if status != 0 or not inner:
        raise SpawnError(f"the process that forks envd in the container failed ({status})")
    return _host_pid(proc, init, int(inner))


def _join_order(namespaces: dict[str, int]) -> list[str]:
    """NAMESPACES, those the container's user namespace does not own first: once in
    it, this process has no privilege left over the host's (the network slot's
    namespace is the node's, not the container's)."""
    own = os.fstat(namespaces["user"]).st_ino
    host_owned = []
    for name in NAMESPACES:
        if name != "user":
            owner = fcntl.ioctl(namespaces[name], NS_GET_USERNS)
            try:
                if os.fstat(owner).st_ino != own:
                    host_owned.append(name)
            finally:
                os.close(owner)
    return host_owned + [name for name in NAMESPACES if name not in host_owned]


def _host_pid(proc: int, init: int, inner: int) -> int:
    """The host pid of the child of `init` that has pid `inner` in the container."""
    children = os.open(f"{init}/task/{init}/children", os.O_RDONLY, dir_fd=proc)
    with os.fdopen(children) as f:
        candidates = [int(p) for p in f.read().split()]
    for pid in candidates:
        with contextlib.suppress(OSError):
            status = os.open(f"{pid}/status", os.O_RDONLY, dir_fd=proc)
            with os.fdopen(status) as f:
                for line in f:
                    if line.startswith("NSpid:") and int(line.split()[-1]) == inner:
                        return pid
    raise SpawnError(f"envd (pid {inner} in the container) is not the container's init's child")


def _become_envd(
    request: dict[str, Any],
    output: int | None,
    bundle: str,
    target: str,
    seccomp: ctypes.CDLL | None,
) -> None:
    """Turn this forked process into the container's envd; never returns."""
    code = 1
    try:
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(output if output is not None else null, 1)
        os.dup2(output if output is not None else null, 2)
        # The zygote's socket, the namespace files, the node's pipe: none is envd's.
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(number, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()  # the container's /etc/localtime, not the host's
        _relocate(bundle, target)
        limit = int(request["open_files"])
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        # The orphans of envd's processes come to envd, which reaps them, not to the
        # init, whose only child it must stay.
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        if request.get("no_new_privileges"):
            _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if request.get("seccomp"):
            # While it still has CAP_SYS_ADMIN here: without it, the kernel would want
            # the no-new-privileges bit, which stops the template's sudo.
            assert seccomp is not None
            _load_seccomp(seccomp, request["seccomp"])
        _keep_capabilities(request["capabilities"])
        _serve_envd(str(request["host"]), int(request["port"]))
        code = 0
    except BaseException as e:  # noqa: BLE001 - said in envd's log, and the process ends
        with contextlib.suppress(BaseException):
            print(f"envd (zygote-born): {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    finally:
        os._exit(code)


def _relocate(bundle: str, target: str) -> None:
    """Point the interpreter's paths from the bundle's host directory to where the
    container mounts it, for whatever is imported from here on."""

    def moved(path: str) -> str:
        if path == bundle or path.startswith(bundle + "/"):
            return target + path[len(bundle) :]
        return path

    sys.path[:] = [moved(p) for p in sys.path]
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [moved(p) for p in search]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    sys.executable = moved(sys.executable)


def _keep_capabilities(names: list[str]) -> None:
    """Hold `names` only, as the OCI runtime's bounding, effective, permitted and
    inheritable sets would."""
    keep = {CAPABILITY_NUMBERS[name] for name in names}
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for number in range(last + 1):
        if number not in keep:
            _prctl(PR_CAPBSET_DROP, number)
    mask = [0, 0]
    for number in keep:
        mask[number // 32] |= 1 << (number % 32)
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(*(_CapData(m, m, m) for m in mask))
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _load_seccomp(lib: ctypes.CDLL, profile: dict[str, Any]) -> None:
    """Load an OCI `linux.seccomp` profile (the actions and comparisons Hearth's uses)."""

    def action(name: str, errno: int) -> int:
        if name == "SCMP_ACT_ALLOW":
            return SCMP_ACT_ALLOW
        if name == "SCMP_ACT_ERRNO":
            return SCMP_ACT_ERRNO | (errno & 0xFFFF)
        raise SpawnError(f"seccomp action {name} is not supported here")

    ctx = lib.seccomp_init(action(profile["defaultAction"], 0))
    if not ctx:
        raise SpawnError("seccomp_init failed")
    try:
        # libseccomp sets no-new-privileges itself unless told not to; the OCI config
        # says whether to (`no_new_privileges`).
        _check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0), "seccomp_attr_set")
        for arch in profile.get("architectures", []):
            token = SCMP_ARCHES[arch]
            if token != SCMP_ARCHES["SCMP_ARCH_X86_64"]:  # the native one is there
                _check(lib.seccomp_arch_add(ctx, token), f"seccomp_arch_add {arch}")
        for rule in profile.get("syscalls", []):
            act = action(rule["action"], int(rule.get("errnoRet", 1)))
            args = rule.get("args") or []
            cmps = (_ArgCmp * max(1, len(args)))(
                *(
                    _ArgCmp(a["index"], SCMP_OPS[a["op"]], a["value"], a.get("valueTwo", 0))
                    for a in args
                )
            )
            for name in rule["names"]:
                number = lib.seccomp_syscall_resolve_name(name.encode())
                if number < 0:
                    continue  # not a syscall of this architecture
                _check(
                    lib.seccomp_rule_add_array(ctx, act, number, len(args), cmps),
                    f"seccomp rule for {name}",
                )
        _check(lib.seccomp_load(ctx), "seccomp_load")
    finally:
        lib.seccomp_release(ctx)


def _serve_envd(host: str, port: int) -> None:
    import threading

    from hearth.envd.process import reap_orphans
    from hearth.envd.server import Envd

    threading.Thread(target=reap_orphans, name="reaper", daemon=True).start()
    Envd().serve(host, port)


# --- start -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="envd-zygote", description=__doc__.splitlines()[0])
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--bundle", required=True, help="the bundle's directory on the host")
    parser.add_argument("--target", required=True, help="where containers mount the bundle")
    args = parser.parse_args(argv)
    listener = socket.socket(fileno=args.listen_fd)
    listener.setblocking(False)
    for name in PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops it, not its terminal
    gc.collect()
    gc.freeze()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    serve(listener, args.bundle.rstrip("/"), args.target.rstrip("/"))


if __name__ == "__main__":
    main()
