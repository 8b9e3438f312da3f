"""A template's root filesystem as an ext4 disk image for microVMs.

The image is the cached root directory of a template (`rootfs.ensure_root`) with the
envd bundle copied in at `/opt/hearth/envd`, a static busybox at `/opt/hearth/bin` and
the guest init at `/opt/hearth/init`, made with `mkfs.ext4 -d` from a staging tree (no
loop mount, no root privileges needed for the image itself). The staging tree hard-links
the template's files, so it costs inodes, not a copy; nothing is ever written through
those links.

The guest init (PID 1 after the initramfs switches root) mounts what envd and the
user's processes need, brings up eth0 from the kernel command line
(`hearth.ip=ADDR/LEN hearth.gw=ADDR hearth.dns=A,B`) and execs envd, which reaps orphans
as PID 1. Images are cached under `cache_dir/images/<kind>-<key>/rootfs.ext4`, keyed by
the root's and the bundle's stamps and this recipe; VMs never write to them (each gets
qcow2 overlays).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from hearth.config import settings
from hearth.node.disk.cache import STAMP_NAME, ensure_dir, progress, read_stamp
from hearth.node.disk.overlay_disk import DEFAULT_SIZE_MB
from hearth.node.disk.rootfs import static_busybox
from hearth.node.guest.envd_bundle import envd_command
from hearth.node.guest.envd_client import ENVD_PORT, ENVD_TARGET

# Bump when the image's layout or the init below change.
RECIPE_VERSION = 1
INIT_PATH = "opt/hearth/init"
BUSYBOX_PATH = "opt/hearth/bin/busybox"
ENVD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

GUEST_INIT = """\
#!/opt/hearth/bin/busybox sh
# Hearth's guest init: mounts, network from the kernel command line, then envd as PID 1.
B=/opt/hearth/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mkdir -p /dev/pts /dev/shm /run /tmp
$B mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
$B mount -t tmpfs -o mode=1777 tmpfs /dev/shm
$B mount -t tmpfs -o mode=755 tmpfs /run
$B mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
$B ln -sf /proc/self/fd /dev/fd
$B ln -sf /proc/self/fd/0 /dev/stdin
$B ln -sf /proc/self/fd/1 /dev/stdout
$B ln -sf /proc/self/fd/2 /dev/stderr
$B chmod 1777 /tmp
[ -f /etc/hostname ] && $B hostname "$($B cat /etc/hostname)"
for arg in $($B cat /proc/cmdline); do
    case "$arg" in
        hearth.ip=*) ip="${arg#hearth.ip=}" ;;
        hearth.gw=*) gw="${arg#hearth.gw=}" ;;
        hearth.dns=*) dns="${arg#hearth.dns=}" ;;
    esac
done
$B ip link set lo up
if [ -n "$ip" ]; then
    $B ip addr add "$ip" dev eth0
    $B ip link set eth0 up
    [ -n "$gw" ] && $B ip route add default via "$gw"
fi
if [ -n "$dns" ]; then
    $B rm -f /etc/resolv.conf
    for ns in $($B echo "$dns" | $B tr , ' '); do echo "nameserver $ns"; done > /etc/resolv.conf
fi
export PATH=@PATH@
cd /
exec @ENVD@
"""


class ImageError(RuntimeError):
    """The disk image could not be made; the message carries the tool's output."""


def ensure_image(
    kind: str,
    layers: list[Path],
    bundle: Path,
    cache_dir: Path | None = None,
    free_mb: int | None = None,
) -> Path:
    """The ext4 image of a template's `layers` (named `kind` in logs) with the envd
    bundle `bundle` in it and `free_mb` free for the sandbox's writes (the template's
    diskSizeMB, as a container sandbox's writable layer has, and the same default);
    built on first use and whenever any of them changes. The file is sparse."""
    init = guest_init()
    free_mb = free_mb or DEFAULT_SIZE_MB
    recipe = {
        "version": RECIPE_VERSION,
        "layers": [str(p.resolve()) for p in layers],
        "bundle_stamp": read_stamp(bundle),
        "busybox": hashlib.sha256(static_busybox().read_bytes()).hexdigest(),
        "init": init,
        "free_mb": free_mb,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    entry = (cache_dir or settings().cache_dir) / "images" / f"{kind}-{key}"
    ensure_dir(entry, key, lambda tmp: _build(tmp, kind, layers, bundle, init, free_mb << 20))
    return entry / "rootfs.ext4"


def guest_init() -> str:
    argv = envd_command(ENVD_TARGET, "0.0.0.0", ENVD_PORT)
    return GUEST_INIT.replace("@PATH@", ENVD_PATH).replace("@ENVD@", " ".join(argv))


def _build(entry: Path, kind: str, layers: list[Path], bundle: Path, init: str, free: int) -> None:
    from hearth.template.layers import flatten

    progress(f"making the {kind} disk image in {entry.parent}")
    staging = entry / "staging"
    try:
        # Hard links into the layers, not copies. Anything added below is a new file;
        # nothing is written through a link.
        flatten(layers, staging)
        envd = staging / ENVD_TARGET.lstrip("/")
        if envd.exists():
            shutil.rmtree(envd) if envd.is_dir() else envd.unlink()
        shutil.copytree(bundle, envd, symlinks=True, ignore=shutil.ignore_patterns(STAMP_NAME))
        busybox = staging / BUSYBOX_PATH
        busybox.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(static_busybox(), busybox)
        init_file = staging / INIT_PATH
        init_file.unlink(missing_ok=True)
        init_file.write_text(init)
        init_file.chmod(0o755)
        for name in ("proc", "sys", "dev", "run", "tmp"):
            (staging / name).mkdir(exist_ok=True)
        used = _disk_usage(staging)
        image = entry / "rootfs.ext4"
        with open(image, "wb") as f:
            f.truncate(_round_up(used + used // 4 + free, 1 << 20))
        done = subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "hearthroot",
                "-E",
                "root_owner=0:0",
                "-d",
                str(staging),
                str(image),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ImageError(f"mkfs.ext4 failed ({done.returncode}): {done.stderr[-1000:]}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _disk_usage(path: Path) -> int:
    done = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to
