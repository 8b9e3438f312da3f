"""The OCI config of a container sandbox (pure logic, no root needed)."""

from __future__ import annotations

from pathlib import Path

from hearth.node.runtime.container.bundle import ContainerConfig, oci_config
from hearth.node.runtime.container.seccomp import profile


def _config(**overrides) -> dict:
    fields = dict(
        rootfs=Path("/data/sandboxes/x/rootfs"),
        argv=["/opt/hearth/envd/lib/ld-linux-x86-64.so.2", "envd"],
        env={"PATH": "/usr/bin:/bin"},
        hostname="hearth",
        id_base=2**30 + 3 * 65536,
        id_count=65536,
        netns_path=Path("/data/netns/7"),
        cgroups_path="/hearth/x",
        cpu_count=2,
        memory_mb=512,
        pids_limit=4096,
    )
    fields.update(overrides)
    return oci_config(ContainerConfig(**fields))


def test_namespaces_ids_and_limits() -> None:
    c = _config()
    namespaces = {n["type"]: n.get("path") for n in c["linux"]["namespaces"]}
    assert namespaces == {
        "pid": None, "network": "/data/netns/7", "ipc": None, "uts": None,
        "mount": None, "user": None, "cgroup": None,
    }  # fmt: skip
    mapping = [{"containerID": 0, "hostID": 2**30 + 3 * 65536, "size": 65536}]
    assert c["linux"]["uidMappings"] == c["linux"]["gidMappings"] == mapping
    resources = c["linux"]["resources"]
    assert resources["memory"] == {"limit": 512 * 2**20, "swap": 512 * 2**20}
    assert resources["cpu"] == {"quota": 200_000, "period": 100_000}
    assert resources["pids"] == {"limit": 4096}
    # Off: `user` must be able to sudo, and the sandbox's root is unprivileged on the host.
    assert c["process"]["noNewPrivileges"] is False
    assert "CAP_SYS_ADMIN" not in c["process"]["capabilities"]["bounding"]
    assert c["root"] == {"path": "/data/sandboxes/x/rootfs", "readonly": False}


def test_seccomp_allows_by_default_and_denies_escapes() -> None:
    p = profile()
    assert p["defaultAction"] == "SCMP_ACT_ALLOW"
    denied = {n for rule in p["syscalls"] if not rule.get("args") for n in rule["names"]}
    assert {"mount", "unshare", "setns", "bpf", "kexec_load", "clone3"} <= denied
    clone = [r for r in p["syscalls"] if r["names"] == ["clone"]]
    new_user = 0x10000000
    assert any(r["args"][0]["value"] == new_user for r in clone)


def test_host_view_binds_lxcfs_read_only_and_sets_the_cpus() -> None:
    from hearth.node.runtime.container.bundle import LXCFS_FILES, cpu_limit, host_view
    from hearth.node.runtime.container.lxcfs import LxcfsView

    c = _config(cpu_count=2)
    assert cpu_limit(c) == 2
    kernel = list(c["mounts"])
    view = LxcfsView(Path("/data/lxcfs/mnt"), ("/proc/meminfo", "/sys/devices/system/cpu/online"))
    c = host_view(c, view, "2-3")
    binds = {m["destination"]: m for m in c["mounts"] if m["destination"] in LXCFS_FILES}
    assert binds["/proc/meminfo"] == {
        "destination": "/proc/meminfo",
        "type": "bind",
        "source": "/data/lxcfs/mnt/proc/meminfo",
        "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
    }
    assert binds["/sys/devices/system/cpu/online"]["source"] == (
        "/data/lxcfs/mnt/sys/devices/system/cpu/online"
    )
    # After /proc and /sys, which they cover files of.
    assert c["mounts"][: len(kernel)] == kernel
    assert c["linux"]["resources"]["cpu"] == {"quota": 200_000, "period": 100_000, "cpus": "2-3"}
    # A launch without a daemon up, on all CPUs: the kernel's files, no cpuset.
    c = host_view(c, None, None)
    assert c["mounts"] == kernel
    assert c["linux"]["resources"]["cpu"] == {"quota": 200_000, "period": 100_000}
