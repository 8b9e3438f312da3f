"""The OCI bundle config (`config.json`) of a container sandbox."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hearth.node.runtime.container import seccomp

if TYPE_CHECKING:
    from hearth.node.runtime.container.lxcfs import LxcfsView

# Docker's default set minus what a sandbox has no use for; envd needs SETUID/SETGID to
# run the user's processes as `user`, and the user's root needs CHOWN, DAC_OVERRIDE,
# FOWNER and friends to administer its own filesystem. All of them act only inside the
# sandbox's user namespace.
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
]

MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

CFS_PERIOD_US = 100_000

# The kernel's boot id is the host's in every container. Each boot of a sandbox sees its
# own instead, as a VM's guest does: a file beside the rootfs, bound over the kernel's,
# that the launcher writes afresh at every launch. A memory pause keeps it (the same
# boot goes on); a filesystem-only pause's resume is a new boot, with a new id.
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
BOOT_ID_FILE = "boot_id"

# The kernel's files that say the host's memory, CPUs, uptime and load, whatever the
# reader's limits: lxcfs's own, which answer for the reader's cgroup, are bound over
# them (`host_view`), so that `free`, `top`, `nproc` and `os.cpu_count()` see the
# sandbox. runc accepts binds inside /proc for these paths only (its lxcfs list).
LXCFS_FILES = (
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/loadavg",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/sys/devices/system/cpu/online",
)
READ_ONLY_BIND = ("bind", "ro", "nosuid", "nodev", "noexec")


@dataclass(frozen=True)
class ContainerConfig:
    rootfs: Path  # absolute, the mounted overlay
    argv: list[str]
    env: dict[str, str]
    hostname: str
    id_base: int  # host uid/gid of the container's 0
    id_count: int
    netns_path: Path
    cgroups_path: str  # "/parent/name", from the root of each hierarchy
    cpu_count: int
    memory_mb: int
    pids_limit: int
    no_new_privileges: bool = False
    open_files: int = 1 << 20

    @property
    def boot_id(self) -> Path:
        """The file that holds this boot's id, in the bundle's directory."""
        return self.rootfs.parent / BOOT_ID_FILE


def oci_config(c: ContainerConfig) -> dict:
    """config.json for `c` (OCI runtime spec 1.0.2)."""
    memory = c.memory_mb * 2**20
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": c.argv,
            "env": [f"{k}={v}" for k, v in c.env.items()],
            "cwd": "/",
            "capabilities": {k: CAPABILITIES for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": c.open_files, "soft": c.open_files}],
            "noNewPrivileges": c.no_new_privileges,
        },
        "root": {"path": str(c.rootfs), "readonly": False},
        "hostname": c.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": BOOT_ID_PATH,
                "type": "bind",
                "source": str(c.boot_id),
                "options": list(READ_ONLY_BIND),
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={memory // 2}"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            # A fresh sysfs needs a network namespace owned by the container's user
            # namespace, and the slot's belongs to the host: bind the host's, read-only
            # (its files belong to ids the sandbox does not map, so it could not write
            # them anyway) and hide the host's cgroup tree under it.
            {
                "destination": "/sys",
                "type": "bind",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "noexec", "nodev", "ro", "size=0"],
            },
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": c.id_base, "size": c.id_count}],
            "gidMappings": [{"containerID": 0, "hostID": c.id_base, "size": c.id_count}],
            "namespaces": [
                {"type": "pid"},
                {"type": "network", "path": str(c.netns_path)},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "user"},
                {"type": "cgroup"},
            ],
            "cgroupsPath": c.cgroups_path,
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                # swap = memory: the limit covers memory and swap together.
                "memory": {"limit": memory, "swap": memory},
                "cpu": {"quota": c.cpu_count * CFS_PERIOD_US, "period": CFS_PERIOD_US},
                "pids": {"limit": c.pids_limit},
            },
            "seccomp": seccomp.profile(),
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "rootfsPropagation": "private",
        },
    }


def host_view(config: dict, lxcfs: LxcfsView | None, cpus: str | None) -> dict:
    """`config` with what a launch takes from the host as it is at that moment: lxcfs's
    files over the kernel's while its daemon is up (without, the sandbox sees the
    host's), and the CPUs it may run on (None: all the host's)."""
    mounts = [m for m in config["mounts"] if m.get("destination") not in LXCFS_FILES]
    if lxcfs is not None:
        mounts += [
            {
                "destination": path,
                "type": "bind",
                "source": f"{lxcfs.mount}{path}",
                "options": list(READ_ONLY_BIND),
            }
            for path in lxcfs.files
        ]
    config["mounts"] = mounts
    cpu = config["linux"]["resources"]["cpu"]
    if cpus is None:
        cpu.pop("cpus", None)
    else:
        cpu["cpus"] = cpus
    return config


def cpu_limit(config: dict) -> int:
    """How many CPUs' time the config's quota allows (its sandbox's `cpu_count`)."""
    cpu = config["linux"]["resources"]["cpu"]
    return max(1, -(-cpu["quota"] // cpu["period"]))
