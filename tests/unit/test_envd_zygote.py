"""The envd zygote's setting and what the node asks it for (no sandbox needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.config import settings
from hearth.node.runtime.container.bundle import CAPABILITIES, ContainerConfig, oci_config
from hearth.node.runtime.container.seccomp import profile
from hearth.node.runtime.container.zygote import spawn_request


def test_the_zygote_is_off_unless_asked_for() -> None:
    assert settings({}).envd_zygote is False
    assert settings({"HEARTH_ENVD_ZYGOTE": "0"}).envd_zygote is False
    assert settings({"HEARTH_ENVD_ZYGOTE": " On "}).envd_zygote is True
    assert settings({"HEARTH_ENVD_ZYGOTE": "1"}).envd_zygote is True
    with pytest.raises(ValueError, match="HEARTH_ENVD_ZYGOTE"):
        settings({"HEARTH_ENVD_ZYGOTE": "maybe"})


def test_envd_is_asked_for_with_what_the_container_process_gets() -> None:
    config = oci_config(
        ContainerConfig(
            rootfs=Path("/sandboxes/x/rootfs"),
            argv=["/init"],
            env={"PATH": "/usr/bin:/bin"},
            hostname="h",
            id_base=2**30,
            id_count=65536,
            netns_path=Path("/run/netns/x"),
            cgroups_path="/hearth/x",
            cpu_count=1,
            memory_mb=256,
            pids_limit=4096,
            no_new_privileges=True,
            open_files=4096,
        )
    )
    request = spawn_request(config, 1234, ["/sys/fs/cgroup/pids/hearth/x"], 49983)
    assert request["init_pid"] == 1234 and request["port"] == 49983
    assert request["env"] == {"PATH": "/usr/bin:/bin", "HOME": "/root"}
    assert request["open_files"] == 4096
    assert request["capabilities"] == CAPABILITIES
    assert request["no_new_privileges"] is True
    assert request["seccomp"] == profile()
    assert request["cgroups"] == ["/sys/fs/cgroup/pids/hearth/x"]
