"""Run inside a build sandbox by the envd bundle's Python: the build operations that must
work whatever the image holds (no shell, no useradd, no tar): make the `user` account,
create a workdir, copy uploaded files into place.

Standard library only; started as `python -I -S _guest.py OP JSON` as root. Exits 0, or
prints one line saying what is wrong and exits 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tarfile
import tempfile

SKELETON = {
    ".bashrc": "# ~/.bashrc: read by interactive shells.\n"
    "case $- in *i*) ;; *) return ;; esac\nPS1='\\u@\\h:\\w\\$ '\n",
    ".profile": "# ~/.profile: read by login shells.\n"
    'if [ -n "$BASH_VERSION" ] && [ -f "$HOME/.bashrc" ]; then\n    . "$HOME/.bashrc"\nfi\n'
    'if [ -d "$HOME/.local/bin" ]; then\n    PATH="$HOME/.local/bin:$PATH"\nfi\n',
}
# useradd's rule; anything else would corrupt /etc/passwd.
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}[$]?|[0-9]+", re.IGNORECASE)
BASH_SHIM = '#!/bin/sh\nexec /bin/sh "$@"\n'
BUSYBOX_BASH_SHIM = '#!/bin/sh\nexec /bin/busybox sh "$@"\n'


class GuestError(Exception):
    pass


def _entries(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _append(path: str, line: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a") as f:
        f.write(line + "\n")
    if new:
        os.chmod(path, mode)


def lookup(name: str) -> tuple[int, int, str]:
    """uid, gid and home of a user name (or a numeric uid)."""
    for fields in _entries("/etc/passwd"):
        if len(fields) >= 6 and (fields[0] == name or fields[2] == name):
            return int(fields[2]), int(fields[3]), fields[5]
    if name.isdigit():
        return int(name), int(name), "/"
    raise GuestError(f"no user {name!r} in the image (add it with set_user or useradd first)")


def ensure_user(name: str, sudo: bool = False, uid: int | None = None) -> None:
    """Make `name` an account with a home under /home if it is not one already, and let it
    sudo without a password when asked and sudo is installed."""
    if not USER_NAME.fullmatch(name):
        raise GuestError(f"{name!r} is not a user name (letters, digits, _ and -, at most 32)")
    users = _entries("/etc/passwd")
    if not any(u[0] == name for u in users):
        taken = {int(u[2]) for u in users if len(u) > 2 and u[2].isdigit()}
        taken |= {int(g[2]) for g in _entries("/etc/group") if len(g) > 2 and g[2].isdigit()}
        if uid is None or uid in taken:
            uid = next(i for i in range(1000, 60000) if i not in taken)
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        home = f"/home/{name}"
        _append("/etc/passwd", f"{name}:x:{uid}:{uid}::{home}:{shell}")
        if not any(g[0] == name for g in _entries("/etc/group")):
            _append("/etc/group", f"{name}:x:{uid}:")
        if os.path.exists("/etc/shadow"):
            _append("/etc/shadow", f"{name}:*:19000:0:99999:7:::", 0o640)
    uid, gid, home = lookup(name)
    if home and home != "/" and not os.path.isdir(home):
        os.makedirs(home, mode=0o755)
        for file, text in SKELETON.items():
            with open(os.path.join(home, file), "w") as f:
                f.write(text)
            os.chown(os.path.join(home, file), uid, gid)
        os.chown(home, uid, gid)
    if sudo and _has_sudo():
        os.makedirs("/etc/sudoers.d", mode=0o750, exist_ok=True)
        path = f"/etc/sudoers.d/{name}"
        with open(path, "w") as f:
            f.write(f"{name} ALL=(ALL:ALL) NOPASSWD: ALL\n")
        os.chmod(path, 0o440)


def _has_sudo() -> bool:
    return any(os.path.exists(p) for p in ("/usr/bin/sudo", "/bin/sudo", "/usr/sbin/sudo"))


def prepare(args: dict) -> None:
    """What every sandbox root needs whatever the image: `user`, a bash for `bash -l`
    (a shim over sh where the image has none), a writable /tmp."""
    no_bash = not os.path.exists("/bin/bash") and not os.path.islink("/bin/bash")
    if no_bash and os.path.exists("/bin/sh"):
        busybox = os.path.realpath("/bin/sh").endswith("busybox")
        with open("/bin/bash", "w") as f:
            f.write(BUSYBOX_BASH_SHIM if busybox else BASH_SHIM)
        os.chmod("/bin/bash", 0o755)
    os.makedirs("/tmp", exist_ok=True)
    os.chmod("/tmp", 0o1777)
    ensure_user(args.get("user", "user"), sudo=True, uid=int(args.get("uid", 1000)))


def user(args: dict) -> None:
    ensure_user(args["name"], sudo=bool(args.get("sudo")))


def workdir(args: dict) -> None:
    uid, gid, _ = lookup(args["user"])
    path = args["path"]
    missing = []
    probe = path
    while probe not in ("", "/") and not os.path.exists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(path, exist_ok=True)
    for created in [*missing, path]:
        os.chown(created, uid, gid)


def copy(args: dict) -> None:
    """E2B's COPY (as its builder does it, not Docker's): the SDK sends only the files
    `src` matched, so `src` up to its first glob names one entry of the uploaded tar. A
    file (or symlink) lands at `dest` exactly; a directory's contents are merged into
    `dest`. `dest` is relative to the workdir; everything is owned by `owner`
    (`user[:group]`) and given `mode`, if any."""
    uid, gid = _owner(args["owner"])
    staging = tempfile.mkdtemp(prefix=".hearth-copy-", dir="/tmp")
    try:
        with tarfile.open(args["tar"]) as tar:
            tar.extractall(staging, filter="data")
        source = os.path.join(staging, _before_glob(args["src"]))
        dest = args["dest"]
        if not dest.startswith("/"):
            dest = os.path.join(args["workdir"], dest)
        mode = args.get("mode")
        if os.path.isdir(source) and not os.path.islink(source):
            _merge_tree(source, dest, uid, gid, mode)
        elif os.path.lexists(source):
            # Into a directory that exists, or that a trailing / names (as Docker does).
            if dest.endswith("/"):
                os.makedirs(dest, exist_ok=True)
            os.makedirs(os.path.dirname(dest.rstrip("/")) or "/", exist_ok=True)
            if os.path.isdir(dest) and not os.path.islink(dest):
                dest = os.path.join(dest, os.path.basename(source))
            if os.path.lexists(dest):
                os.unlink(dest)
            shutil.copy2(source, dest, follow_symlinks=False)
            _own(dest, uid, gid, mode)
        else:
            raise GuestError(f"COPY {args['src']}: no such file in the uploaded context")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.unlink(args["tar"])


def _before_glob(src: str) -> str:
    """`src` up to the first path part with a glob in it ("" for `**/*.py`)."""
    parts = []
    for part in src.strip("/").split("/"):
        if any(c in part for c in "*?[{"):
            break
        parts.append(part)
    return "/".join(p for p in parts if p not in ("", "."))


def _owner(owner: str) -> tuple[int, int]:
    """uid and gid of `user` or `user:group`."""
    name, _, group = owner.partition(":")
    uid, gid, _ = lookup(name)
    if group:
        found = [g for g in _entries("/etc/group") if len(g) > 2 and group in (g[0], g[2])]
        if not found:
            raise GuestError(f"no group {group!r} in the image")
        gid = int(found[0][2])
    return uid, gid


def _merge_tree(source: str, target: str, uid: int, gid: int, mode: str | None) -> None:
    os.makedirs(target, exist_ok=True)
    _own(target, uid, gid, None)
    for dirpath, dirnames, filenames in os.walk(source):
        rel = os.path.relpath(dirpath, source)
        here = os.path.normpath(os.path.join(target, rel))
        for name in dirnames:
            path = os.path.join(here, name)
            if os.path.islink(os.path.join(dirpath, name)):
                if os.path.lexists(path):
                    os.unlink(path)
                shutil.copy2(os.path.join(dirpath, name), path, follow_symlinks=False)
            else:
                os.makedirs(path, exist_ok=True)
                shutil.copystat(os.path.join(dirpath, name), path)
            _own(path, uid, gid, mode)
        for name in filenames:
            path = os.path.join(here, name)
            if os.path.lexists(path) and not os.path.isdir(path):
                os.unlink(path)
            shutil.copy2(os.path.join(dirpath, name), path, follow_symlinks=False)
            _own(path, uid, gid, mode)


def _own(path: str, uid: int, gid: int, mode: str | None) -> None:
    os.lchown(path, uid, gid)
    if mode and not os.path.islink(path):
        os.chmod(path, int(mode, 8))


OPERATIONS = {"prepare": prepare, "user": user, "workdir": workdir, "copy": copy}


def main() -> int:
    op, args = sys.argv[1], json.loads(sys.argv[2])
    try:
        OPERATIONS[op](args)
    except (GuestError, OSError, tarfile.TarError) as e:
        print(f"{op}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
