"""A container sandbox's disk: the writable layer of its overlay on an ext4 file system
of its own, in a sparse image file on a loop device, mounted in the sandbox's directory.

The bound is the file system's size: a write past it fails with ENOSPC inside the
sandbox and nowhere else, `df` there shows the sandbox's disk (the overlay reports its
upper layer's file system), and the host gives it only the blocks it has written (the
image is sparse). A project quota on a plain upper directory would bound it as well, but
needs the host's file system mounted with `prjquota` (ext4 also made with the `project`
feature), which a node cannot ask of its host and which the project's machines lack;
and the space of a quota'd tree comes back only as fast as `rm -rf` runs, where an image
goes with one unlink.

In the sandbox's directory:

    disk.img     the image (`make_image`: an empty ext4 made in ~5 ms, ~250 KiB written)
    disk/        its mount point, on the host; `disk/upper` and `disk/work` are the
                 overlay's upper and work directories

The mount is the host's, so the disk outlives the node process (a restarted node finds
it mounted) and a paused sandbox keeps it without a container; after a reboot `mount`
attaches it again (its journal replays an unclean end). The loop device is attached with
autoclear: it detaches itself when the file system's last mount goes, so a node that
dies between attach and mount leaves no device. Mount namespaces made while the disk was
mounted (other sandboxes' launchers) hold copies of its mount; `release` removes the
mount point after the unmount, which makes the kernel drop those copies too, and so the
device and the image's blocks go with the sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

IMAGE = "disk.img"
MOUNTPOINT = "disk"
UPPER = "upper"
WORK = "work"
# As the API's default (api/_settings.py `disk_size_mb`), so that the warm pool's
# members, started with no size of their own, fit the creates that name none.
DEFAULT_SIZE_MB = 2048
# Below this an ext4 has little room besides its own journal and tables.
MIN_SIZE_MB = 16

# Every option explicit, so that the host's mke2fs.conf changes nothing. The image is
# sparse and new, so the inode tables and the journal already read as zeros: mke2fs
# need not write them (lazy_*_init) and the kernel need not zero them later
# (`noinit_itable` below). No resize inode: nothing grows a sandbox's disk, and its
# reserved blocks are most of what mke2fs would write. No blocks reserved for root: the
# overlay writes as its mounter (the host's root), so they would be the sandbox's anyway
# while `df` showed less. One inode per 8 KiB (the default is 16): node_modules and
# site-packages trees are many small files.
MKFS_OPTIONS = [
    "-q",
    "-F",
    "-t",
    "ext4",
    "-b",
    "4096",
    "-I",
    "256",
    "-i",
    "8192",
    "-m",
    "0",
    "-O",
    "^resize_inode",
    "-E",
    "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
]
MOUNT_OPTIONS = "noinit_itable"

LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CLR_FD = 0x4C01
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16  # no second copy of the sandbox's pages in the host's cache
LO_NAME_SIZE = 64
# struct loop_info64, then struct loop_config: fd, block_size, the info, 8 reserved u64.
_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32sQQ")
MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2


class DiskError(RuntimeError):
    """A sandbox's disk could not be made, mounted or let go of."""


def unavailable() -> str | None:
    """Why this host cannot give sandboxes disks of their own, or None if it can."""
    if not os.path.exists(LOOP_CONTROL):
        return f"{LOOP_CONTROL} is missing (no loop device support)"
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 is not installed (e2fsprogs)"
    return None


def make_image(image: Path, size_mb: int) -> None:
    """Create `image`, a sparse file of `size_mb` MiB holding an empty ext4. A file that
    exists already is another's: FileExistsError."""
    if size_mb < MIN_SIZE_MB:
        raise DiskError(f"a disk of {size_mb} MiB is too small (at least {MIN_SIZE_MB} MiB)")
    fd = os.open(image, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.ftruncate(fd, size_mb << 20)
        finally:
            os.close(fd)
        done = subprocess.run(
            ["mkfs.ext4", *MKFS_OPTIONS, str(image)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise DiskError(f"mkfs.ext4 failed: {done.stderr.strip() or done.returncode}")
    except BaseException:
        image.unlink()  # made here: nobody else's to remove
        raise


def mount(image: Path, mountpoint: Path) -> None:
    """Mount `image` on `mountpoint` (made if missing), attached to a loop device of its
    own. Mounted already, it is left as it is; attached already (and not mounted), its
    device is mounted again: two devices on one image would be two file systems writing
    over each other."""
    mountpoint.mkdir(mode=0o700, exist_ok=True)
    if os.path.ismount(mountpoint):
        return
    devices = loop_devices(image)
    device, fd = (devices[0], _open_device(devices[0])) if devices else _attach(image)
    try:
        if _libc().mount(
            device.encode(),
            os.fsencode(mountpoint),
            b"ext4",
            ctypes.c_ulong(MS_NOSUID | MS_NODEV),
            MOUNT_OPTIONS.encode(),
        ):
            raise _os_error(f"mount {device} ({image}) on {mountpoint}")
    finally:
        os.close(fd)  # autoclear: a device nothing mounted detaches here
    os.chmod(mountpoint, 0o700)  # the disk's root: the overlay's layers are the host's


def release(image: Path, mountpoint: Path) -> None:
    """Unmount the disk and see its loop device go; the image stays (the caller's to
    remove). Raises DiskError if the device is still held once all is done: something
    outside the sandbox keeps its file system open."""
    if os.path.ismount(mountpoint) and _libc().umount2(os.fsencode(mountpoint), 0):
        error = _os_error(f"umount {mountpoint}")
        if error.errno != errno.EBUSY:
            raise error
        # Held open from the host: detach it all the same (its space returns when the
        # holder lets go) and say so below, where the device is still bound.
        _libc().umount2(os.fsencode(mountpoint), MNT_DETACH)
    # Mount namespaces copied from the host's while the disk was mounted hold its mount
    # there still: removing the mount point detaches them all.
    with contextlib.suppress(FileNotFoundError):
        mountpoint.rmdir()
    held = loop_devices(image)
    for device in held:
        with contextlib.suppress(OSError):
            fd = _open_device(device)
            try:
                fcntl.ioctl(fd, LOOP_CLR_FD)  # still in use: detaches at last close
            finally:
                os.close(fd)
    held = loop_devices(image)
    if held:
        raise DiskError(f"{', '.join(held)} on {image} still in use")


def loop_devices(image: Path) -> list[str]:
    """The loop devices attached to `image` (the kernel names the file by its real path)."""
    path = os.path.realpath(image)
    return [device for device, backing in attached() if backing == path]


def attached() -> list[tuple[str, str]]:
    """Every loop device attached on the host, with its backing file's path as the
    kernel names it (" (deleted)" at the end once the file is gone)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir("/sys/block")):
            if not name.startswith("loop"):
                continue
            with contextlib.suppress(OSError):
                backing = Path(f"/sys/block/{name}/loop/backing_file").read_text()
                found.append((f"/dev/{name}", backing.rstrip("\n")))
    return found


def _attach(image: Path) -> tuple[str, int]:
    """A new loop device on `image` (autoclear, direct I/O, 4 KiB blocks), and its fd."""
    control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        info = _LOOP_INFO64.pack(
            *(0,) * 8,
            LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
            os.fsencode(os.path.realpath(image))[: LO_NAME_SIZE - 1],
            b"",
            b"",
            0,
            0,
        )
        config = struct.pack("=II", backing, 4096) + info + bytes(64)
        for _ in range(64):
            device = f"/dev/loop{fcntl.ioctl(control, LOOP_CTL_GET_FREE)}"
            fd = _open_device(device)
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                return device, fd
            except OSError as e:
                os.close(fd)
                if e.errno != errno.EBUSY:
                    raise DiskError(f"attaching {image} to {device}: {e}") from e
                # Another process took that device between the two calls: the next.
        raise DiskError(f"no free loop device for {image}")
    finally:
        os.close(control)
        os.close(backing)


def _open_device(device: str) -> int:
    """Open a loop device, making its node first where /dev lacks it (a static /dev)."""
    try:
        return os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        major, minor = Path(f"/sys/block/{os.path.basename(device)}/dev").read_text().split(":")
        with contextlib.suppress(FileExistsError):
            os.mknod(device, stat.S_IFBLK | 0o600, os.makedev(int(major), int(minor)))
        return os.open(device, os.O_RDWR | os.O_CLOEXEC)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _os_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")
