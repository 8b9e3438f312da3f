"""Run as a script: start envd in new user, mount, pid and UTS namespaces over an overlay.

`IsolatedEnvd` runs this file with the host's interpreter (`python -I -S _launcher.py
SPEC`), so it may import only the standard library. Steps and why they are split:

1. This process unshares a user namespace and reports `U` on the report pipe. The node
   (root on the host) then writes the identity uid/gid map into it, which an
   unprivileged helper like util-linux's newuidmap would otherwise be needed for, and
   sends one byte on the control pipe.
2. It unshares mount, pid and UTS namespaces (owned by the new user namespace, so it
   may mount in them) and forks: the child is PID 1 of the new pid namespace. It reports
   `P<pid>` with the child's host pid and then only waits.
3. The child mounts the overlay root, the bundle, /proc and /dev, pivots into the root,
   detaches the host's tree, sets the host name from the root's /etc/hostname and execs
   envd, which stays PID 1 and reaps orphans itself.

EOF on the control pipe (the node closed it in `stop()`, or died) makes this process
SIGKILL the child; the kernel then kills everything else in the pid namespace, and the
mount namespace with all its mounts goes away with the last process in it.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import sys
import traceback

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MNT_DETACH = 0x2
SYS_PIVOT_ROOT = 155  # x86_64
PR_SET_PDEATHSIG = 1

# statvfs flags of a mount that a user namespace may not clear when it remounts a bind
# of it (the kernel locks them), mapped to the mount(2) flags that keep them.
LOCKED_FLAGS = {
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME,
    os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {
    "ptmx": "pts/ptmx",
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source and source.encode(),
            target.encode(),
            fstype and fstype.encode(),
            ctypes.c_ulong(flags),
            data.encode() or None,
        ),
        f"mount {fstype or source} on {target}",
    )


def _bind_readonly(source: str, target: str) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    locked = os.statvfs(target).f_flag
    keep = sum(ms for st, ms in LOCKED_FLAGS.items() if locked & st)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)


def _build_root(spec: dict) -> str:
    """Mount the sandbox's tree at spec["merged"] and return it."""
    root = spec["merged"]
    _mount(
        "overlay",
        root,
        "overlay",
        0,
        f"lowerdir={spec['lower']},upperdir={spec['upper']},workdir={spec['work']}",
    )
    _bind_readonly(spec["bundle"], root + spec["bundle_target"])
    _mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = f"{root}/dev"
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k")
    # The tmpfs is nodev in a user namespace; bind mounts of the host's nodes keep
    # the host mount's permission to open them.
    for name in DEVICES:
        with open(f"{dev}/{name}", "w"):
            pass
        _mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    os.mkdir(f"{dev}/pts")
    # A private devpts instance: the sandbox sees only its own PTYs.
    _mount(
        "devpts",
        f"{dev}/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )
    os.mkdir(f"{dev}/shm")
    _mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in DEV_LINKS.items():
        os.symlink(target, f"{dev}/{name}")
    return root


def _enter(root: str) -> None:
    """Make `root` the process's root and detach the host's tree from this namespace."""
    os.chdir(root)
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching "."
    # then removes it, so nothing of the host stays reachable (chroot would leave it).
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")


def _set_hostname() -> None:
    try:
        with open("/etc/hostname", "rb") as f:
            name = f.read().strip()
    except OSError:
        return
    if name:
        _check(_libc.sethostname(name, len(name)), "sethostname")


def _init(spec: dict) -> None:
    """PID 1 of the new pid namespace: build the tree, then become envd."""
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _enter(_build_root(spec))
        _set_hostname()
        os.execve(spec["argv"][0], spec["argv"], spec["env"])
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(127)


def main() -> None:
    spec = json.loads(sys.argv[1])
    control, report = spec["control_fd"], spec["report_fd"]
    # envd must not inherit the node's pipes.
    os.set_inheritable(control, False)
    os.set_inheritable(report, False)
    _unshare(CLONE_NEWUSER)
    os.write(report, b"U")
    if os.read(control, 1) != b"1":  # the node gave up before mapping ids
        sys.exit(1)
    # UTS too, so the sandbox's host name can match its /etc/hostname and /etc/hosts
    # (sudo, for one, complains when its host name does not resolve).
    _unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS)
    # Nothing mounted from here on may propagate back to the host.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    pid = os.fork()
    if pid == 0:
        os.close(control)
        os.close(report)
        _init(spec)
    os.write(report, f"P{pid}\n".encode())
    os.close(report)
    child = os.pidfd_open(pid)
    ready, _, _ = select.select([control, child], [], [])
    if control in ready:  # stop() or the node died: take the namespace down
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)  # a shell's convention for signals


if __name__ == "__main__":
    main()
