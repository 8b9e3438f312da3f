"""A container sandbox's own boot id: the bundle binds a per-boot file over the kernel's
`boot_id` and the launcher writes it afresh at each launch (pure logic, no root)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hearth.node.runtime.container import _launcher, bundle
from hearth.node.runtime.container.bundle import ContainerConfig, oci_config

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\n")


def _bundle(directory: Path) -> dict:
    config = oci_config(
        ContainerConfig(
            rootfs=directory / "rootfs",
            argv=["envd"],
            env={},
            hostname="hearth",
            id_base=2**30,
            id_count=65536,
            netns_path=Path("/data/netns/7"),
            cgroups_path="/hearth/x",
            cpu_count=1,
            memory_mb=256,
            pids_limit=4096,
        )
    )
    (directory / "config.json").write_text(json.dumps(config))
    return config


def _boot_id_mounts(config: dict) -> list[dict]:
    return [m for m in config["mounts"] if m["destination"] == bundle.BOOT_ID_PATH]


def test_the_launcher_and_the_bundle_name_the_same_file() -> None:
    assert _launcher.BOOT_ID_PATH == bundle.BOOT_ID_PATH
    assert _launcher.BOOT_ID_FILE == bundle.BOOT_ID_FILE


def test_the_bundle_binds_its_boot_id_read_only_over_the_kernels(tmp_path: Path) -> None:
    config = _bundle(tmp_path)
    destinations = [m["destination"] for m in config["mounts"]]
    # After /proc, which it lies in.
    assert destinations.index(bundle.BOOT_ID_PATH) > destinations.index("/proc")
    [mount] = _boot_id_mounts(config)
    assert mount["source"] == str(tmp_path / "boot_id")
    assert mount["type"] == "bind" and "ro" in mount["options"]


def test_each_launch_writes_a_new_boot_id(tmp_path: Path) -> None:
    _bundle(tmp_path)
    _launcher._new_boot_id(str(tmp_path), "/usr/bin/crun")
    first = (tmp_path / "boot_id").read_text()
    _launcher._new_boot_id(str(tmp_path), "/usr/bin/crun")
    second = (tmp_path / "boot_id").read_text()
    assert UUID.fullmatch(first) and UUID.fullmatch(second) and first != second
    assert (tmp_path / "boot_id").stat().st_mode & 0o777 == 0o444
    assert _boot_id_mounts(json.loads((tmp_path / "config.json").read_text()))  # kept


def test_under_runc_the_bind_is_a_create_container_hook(tmp_path: Path) -> None:
    _bundle(tmp_path)
    for _ in range(2):  # a second launch finds it done
        _launcher._new_boot_id(str(tmp_path), "/usr/sbin/runc")
        config = json.loads((tmp_path / "config.json").read_text())
        assert _boot_id_mounts(config) == []
        [hook] = config["hooks"]["createContainer"]
        target = f"{tmp_path}/rootfs{bundle.BOOT_ID_PATH}"
        assert hook["args"][1:] == [
            "--bind", "-o", "ro,nosuid,nodev,noexec", str(tmp_path / "boot_id"), target
        ]  # fmt: skip
    assert UUID.fullmatch((tmp_path / "boot_id").read_text())
