"""The microVM guest kernel: Debian's cloud kernel as an ELF vmlinux, and an initramfs.

Built from Debian packages without installing a kernel on the host: the concrete image
package that `linux-image-cloud-amd64` depends on is fetched with `apt-get download` and
unpacked with `dpkg-deb -x` into a scratch directory. QEMU boots the uncompressed ELF
(PVH entry) directly, which skips the bzImage decompressor; the LZ4 payload of the
bzImage is found by its magic and decompressed with `lz4`.

virtio is modular in Debian's kernels, so a small busybox initramfs loads the modules
(in dependency order: `virtio_ring` before `virtio`, else "Unknown symbol
virtio_break_device"), waits for the root disk, mounts it (ext4 is built in) and
switches to the image's `/opt/hearth/init`. With `hearth.canary` on the command line it
prints `HEARTH-CANARY-OK` and powers off instead (the acceleration check).

Cached in `cache_dir/kernel/<key>` with the package's name and version, busybox's
digest and this recipe in the key: a new kernel in the archive builds beside the old.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hearth.config import settings
from hearth.node.disk.cache import ensure_dir, progress
from hearth.node.disk.rootfs import static_busybox

# Bump when the build below changes in a way the key's inputs miss.
RECIPE_VERSION = 2
META_PACKAGE = "linux-image-cloud-amd64"
# Load order matters: each needs the symbols of those before it.
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
)
LZ4_MAGIC = b"\x02\x21\x4c\x18"
ROOT_DEVICE = "/dev/vda"
GUEST_INIT = "/opt/hearth/init"
CANARY_MARKER = "HEARTH-CANARY-OK"

INITRAMFS_INIT = """\
#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
if grep -q hearth.canary /proc/cmdline; then echo HEARTH-CANARY-OK; poweroff -f; fi
for m in {modules}; do
    insmod /lib/modules/$m.ko || echo "initramfs: insmod $m failed"
done
n=0
while [ ! -b {root} ]; do
    n=$((n + 1))
    [ $n -gt 2000 ] && echo "initramfs: no {root}" && poweroff -f
    usleep 5000
done
if ! mount -t ext4 -o rw,noatime {root} /newroot; then
    echo "initramfs: cannot mount {root}"
    poweroff -f
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot {init}
"""


class KernelError(RuntimeError):
    """The guest kernel could not be fetched or assembled."""


@dataclass(frozen=True)
class GuestKernel:
    vmlinux: Path  # uncompressed ELF with the PVH entry note
    initramfs: Path  # uncompressed newc cpio
    release: str  # e.g. 6.1.0-56-cloud-amd64
    key: str  # the recipe key: what snapshots of guests booted from it are tied to


def ensure_kernel(cache_dir: Path | None = None) -> GuestKernel:
    """The guest kernel and initramfs, built on first use and when their inputs change."""
    package, version = _image_package()
    busybox = static_busybox()
    recipe = {
        "version": RECIPE_VERSION,
        "package": package,
        "package_version": version,
        "busybox": hashlib.sha256(busybox.read_bytes()).hexdigest(),
        "modules": MODULES,
        "init": INITRAMFS_INIT,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    entry = (cache_dir or settings().cache_dir) / "kernel" / key
    ensure_dir(entry, key, lambda tmp: _build(tmp, package, busybox))
    release = (entry / "release").read_text().strip()
    return GuestKernel(entry / "vmlinux", entry / "initramfs.cpio", release, key)


def _image_package() -> tuple[str, str]:
    """The concrete kernel image package the meta package depends on, and its version."""
    try:
        shown = _run(["apt-cache", "show", "--no-all-versions", META_PACKAGE])
    except KernelError:
        # A machine whose package lists were never fetched (or were cleaned away).
        progress("apt knows no guest kernel package: running apt-get update")
        _run(["apt-get", "update", "-qq"])
        shown = _run(["apt-cache", "show", "--no-all-versions", META_PACKAGE])
    depends = _field(shown, "Depends")
    names = [d.strip().split()[0] for d in depends.split(",") if d.strip()]
    image = next((n for n in names if n.startswith("linux-image-")), None)
    if image is None:
        raise KernelError(f"{META_PACKAGE} depends on no linux-image package: {depends!r}")
    version = _field(_run(["apt-cache", "show", "--no-all-versions", image]), "Version")
    return image, version


def _field(control: str, name: str) -> str:
    for line in control.splitlines():
        if line.startswith(f"{name}:"):
            return line.partition(":")[2].strip()
    raise KernelError(f"no {name} field in apt's answer:\n{control[:500]}")


def _build(entry: Path, package: str, busybox: Path) -> None:
    progress(f"assembling the guest kernel from {package}")
    with tempfile.TemporaryDirectory(prefix="hearth-kernel-") as scratch:
        work = Path(scratch)
        # apt's sandbox user must be able to write the download directory.
        work.chmod(0o777)
        _run(["apt-get", "download", package], cwd=work)
        (deb,) = work.glob(f"{package}_*.deb")
        tree = work / "tree"
        _run(["dpkg-deb", "-x", str(deb), str(tree)])
        (vmlinuz,) = (tree / "boot").glob("vmlinuz-*")
        release = vmlinuz.name.removeprefix("vmlinuz-")
        _extract_vmlinux(vmlinuz, entry / "vmlinux")
        modules = tree / "lib" / "modules" / release
        _make_initramfs(entry / "initramfs.cpio", modules, busybox, work / "initramfs")
        (entry / "config").write_bytes((tree / "boot" / f"config-{release}").read_bytes())
    (entry / "release").write_text(release + "\n")


def _extract_vmlinux(vmlinuz: Path, dest: Path) -> None:
    data = vmlinuz.read_bytes()
    offset = data.find(LZ4_MAGIC)
    if offset < 0:
        raise KernelError(f"{vmlinuz} holds no LZ4 payload (another compression?)")
    done = subprocess.run(["lz4", "-dc"], input=data[offset:], capture_output=True)
    # lz4 complains about the bytes after the frame (the bzImage's tail) but has
    # written the whole kernel by then: the ELF header decides.
    if not done.stdout.startswith(b"\x7fELF"):
        raise KernelError(f"lz4 gave no ELF kernel: {done.stderr.decode()[-500:]}")
    dest.write_bytes(done.stdout)


def _make_initramfs(dest: Path, modules: Path, busybox: Path, staging: Path) -> None:
    for d in ("bin", "lib/modules", "dev", "proc", "sys", "newroot"):
        (staging / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, staging / "bin" / "busybox")
    found = {p.name.removesuffix(".ko"): p for p in modules.rglob("*.ko")}
    for name in MODULES:
        if name not in found:
            raise KernelError(f"module {name} not in {modules}")
        shutil.copy2(found[name], staging / "lib" / "modules" / f"{name}.ko")
    init = staging / "init"
    init.write_text(
        INITRAMFS_INIT.format(modules=" ".join(MODULES), root=ROOT_DEVICE, init=GUEST_INIT)
    )
    init.chmod(0o755)
    paths = sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
    with open(dest, "wb") as out:
        done = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet", "--owner=0:0"],
            input="\n".join(paths).encode(),
            cwd=staging,
            stdout=out,
            stderr=subprocess.PIPE,
        )
    if done.returncode != 0:
        raise KernelError(f"cpio failed: {done.stderr.decode()[-500:]}")


def _run(argv: list[str], cwd: Path | None = None) -> str:
    env = {**os.environ, "LC_ALL": "C"}
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise KernelError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-1000:]}")
    return done.stdout
