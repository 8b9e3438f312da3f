"""Run as a script: mount a container sandbox's root in a private mount namespace, then
exec the OCI runtime's `run` in it.

`ContainerSandbox` runs this file with the host's interpreter (`python -I -S
_launcher.py SPEC`), so it may import only the standard library. It:

1. unshares a mount namespace and makes every mount in it private, so nothing below
   reaches the host's mount table, and unmounts the hybrid cgroup2 mount if the
   runtime needs that (crun, see oci.py);
2. makes a user namespace with the sandbox's id map (a short-lived child holds it) and
   mounts each of the template's layers and the envd bundle *idmapped* through it,
   read-only: the template's uid 0 and 1000 show as the sandbox's 0 and 1000 although
   the layers belong to the host's ids, and files are shared with every other sandbox;
3. mounts an overlay of the idmapped layers (lower) and the sandbox's own directory
   (upper, owned by the sandbox's root on the host), and the bundle under it;
4. writes this boot's own boot id (a random UUID) to the bundle's `boot_id`, which
   config.json binds over the kernel's `/proc/sys/kernel/random/boot_id`, so that each
   launch is a new boot inside (bundle.py). runc refuses mounts inside /proc, so for
   runc that bind becomes a `createContainer` hook that makes it;
5. execs the runtime, which builds the container from this namespace. The runtime's
   process stays as the container's parent and the mounts live as long as the
   container: they disappear with its last process, with nothing to unmount on the host.

Before 2. it unmounts from its namespace the lxcfs mounts of other nodes (lxcfs.py): the
namespace lives as long as the sandbox and would keep every one of them alive, a closed
node's included, where only its own node's is of use (config.json binds its files).

`_launcher.py --rebind SPEC` redoes those binds in running containers instead, after
the node's lxcfs daemon came back or could not (`rebind`).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x100000

# As bundle.py names them (tests/unit/test_boot_id.py holds the two together).
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
BOOT_ID_FILE = "boot_id"
MOUNT_BINARIES = ("/usr/bin/mount", "/bin/mount")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


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


def _id_mapped_userns(base: int, count: int) -> int:
    """An fd of a new user namespace that maps 0..count to base..base+count."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            _check(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
            os.write(ready_w, b"1")
            os.read(done_r, 1)  # EOF: the parent has what it needs
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError("the user namespace helper failed")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(f"0 {base} {count}\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)


def _mount_id_mapped(source: str, target: str, userns: int) -> None:
    """Mount a read-only, id-mapped copy of the tree at `source` on `target`."""
    flags = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
    tree = _detached_tree(source, flags, userns)
    try:
        _move_mount(tree, target)
    finally:
        os.close(tree)


def _detached_tree(source: str, attr_set: int, userns: int = 0) -> int:
    """An fd of a detached copy of the mounts at `source` with `attr_set` (and the
    id map of `userns` if MOUNT_ATTR_IDMAP), to attach anywhere with `_move_mount`."""
    tree = _check(
        _libc.syscall(
            SYS_OPEN_TREE,
            AT_FDCWD,
            source.encode(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
        ),
        f"open_tree {source}",
    )
    try:
        attr = _MountAttr(attr_set, 0, 0, userns)
        _check(
            _libc.syscall(
                SYS_MOUNT_SETATTR,
                tree,
                b"",
                AT_EMPTY_PATH | AT_RECURSIVE,
                ctypes.byref(attr),
                ctypes.sizeof(attr),
            ),
            f"set the attributes of {source}",
        )
    except BaseException:
        os.close(tree)
        raise
    return tree


def _move_mount(tree: int, target: str) -> None:
    _check(
        _libc.syscall(
            SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH
        ),
        f"move_mount to {target}",
    )


def _unescape(field: str) -> str:
    """A mountinfo path field as the path it names (spaces and such are octal escapes)."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def _drop_other_lxcfs(own: str | None) -> None:
    """Unmount every lxcfs mount in this namespace but `own` (see the module's doc)."""
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split(" ")[4] for line in mountinfo if " - fuse.lxcfs " in line]
    for point in points:
        path = _unescape(point)
        if path != own:
            _libc.umount2(path.encode(), MNT_DETACH)


def _random_uuid() -> str:
    """A version 4 UUID in the kernel's form (the uuid module costs 10 ms to import)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _new_boot_id(bundle: str, runtime: str) -> None:
    """Write a fresh boot id for this launch; under runc, see that the config binds it
    by a hook."""
    path = os.path.join(bundle, BOOT_ID_FILE)
    with open(f"{path}.new", "w") as f:
        f.write(f"{_random_uuid()}\n")
    os.chmod(f"{path}.new", 0o444)
    os.replace(f"{path}.new", path)
    if os.path.basename(runtime) == "runc":
        _bind_boot_id_by_hook(os.path.join(bundle, "config.json"))


def _bind_boot_id_by_hook(config_path: str) -> None:
    """Turn config.json's bind over the boot id into a `createContainer` hook: runc
    runs it in the container's namespaces after the mounts and before pivot_root (the
    rootfs still at its host path), as the container's root, which may mount there.
    Done once: the rewritten config has no such mount left."""
    with open(config_path) as f:
        config = json.load(f)
    mounts = config.get("mounts", [])
    bind = next((m for m in mounts if m.get("destination") == BOOT_ID_PATH), None)
    if bind is None:
        return
    mounts.remove(bind)
    target = config["root"]["path"] + BOOT_ID_PATH
    options = ",".join(o for o in bind.get("options", []) if o != "bind")
    binary = next(b for b in MOUNT_BINARIES if os.path.exists(b))
    hook = {"path": binary, "args": ["mount", "--bind", "-o", options, bind["source"], target]}
    config.setdefault("hooks", {}).setdefault("createContainer", []).append(hook)
    with open(f"{config_path}.new", "w") as f:
        json.dump(config, f, indent=1)
    os.replace(f"{config_path}.new", config_path)


def rebind(spec: dict) -> int:
    """Make the lxcfs binds of running containers (their inits' host pids,
    `spec["inits"]`) those of the lxcfs mount `spec["source"]`, or take them away
    (None), for each of `spec["files"]`. One child per container, as setns into a mount
    namespace wants a process of its own; returns 1 if any failed (said on stderr)."""
    children = []
    for pid in spec["inits"]:
        child = os.fork()
        if child == 0:
            code = 0
            try:
                _rebind_in(pid, spec["source"], spec["files"])
            except BaseException as e:  # noqa: BLE001 - reported, and the child ends
                print(f"sandbox init {pid}: {e}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        children.append(child)
    failed = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        failed += status != 0
    return 1 if failed else 0


def _rebind_in(pid: int, source: str | None, files: list[str]) -> None:
    """In the mount namespace of `pid`, bind `source`'s copy of each of `files` over
    it, read-only, in place of what was bound there (a dead daemon's bind), or leave
    the kernel's file if `source` is None. A file already bound from `source` stays."""
    flags = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC
    # Taken here, in the host's namespace, where `source` is.
    trees = {path: _detached_tree(source + path, flags) for path in files} if source else {}
    live = os.stat(source).st_dev if source else None
    namespace = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    _check(_libc.setns(namespace, CLONE_NEWNS), f"setns to the mount namespace of {pid}")
    for path in files:
        try:
            if os.stat(path).st_dev == live:
                continue
        except OSError:
            pass  # ENOTCONN: a dead daemon's
        for _ in range(8):  # until the kernel's own file is on top (EINVAL)
            if _libc.umount2(path.encode(), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
                break
        if path in trees:
            _move_mount(trees[path], path)


def main() -> None:
    if sys.argv[1] == "--rebind":
        sys.exit(rebind(json.loads(sys.argv[2])))
    spec = json.loads(sys.argv[1])
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    if spec["hide_cgroup2"]:
        _libc.umount2(spec["cgroup2_mount"].encode(), MNT_DETACH)
    _drop_other_lxcfs(spec.get("lxcfs"))
    userns = _id_mapped_userns(spec["id_base"], spec["id_count"])
    # One id-mapped mount per template layer; the overlay names them relative to the
    # sandbox's directory so that hundreds fit in a page of mount options.
    os.chdir(spec["directory"])
    lowers = []
    for i, layer in enumerate(spec["layers"]):
        target = os.path.join(spec["lower"], str(i))
        os.makedirs(target, 0o700, exist_ok=True)  # a cold resume finds them
        _mount_id_mapped(layer, target, userns)
        lowers.append(os.path.relpath(target, spec["directory"]))
    # Plain, self-contained layers: no redirects or metacopy that would point between them.
    options = (
        f"lowerdir={':'.join(reversed(lowers))},upperdir={spec['upper']},"
        f"workdir={spec['work']},redirect_dir=off,index=off,metacopy=off"
    )
    _mount("overlay", spec["rootfs"], "overlay", 0, options)
    bundle_target = spec["rootfs"] + spec["envd_target"]
    os.makedirs(bundle_target, exist_ok=True)  # an image's first layer lacks it
    _mount_id_mapped(spec["envd_bundle"], bundle_target, userns)
    os.close(userns)
    _new_boot_id(spec["directory"], spec["argv"][0])
    argv = spec["argv"]
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
