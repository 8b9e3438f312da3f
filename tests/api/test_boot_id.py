"""Each boot of a container sandbox has its own `/proc/sys/kernel/random/boot_id`, as a
VM's guest has (infra's filesystem-only pause tests compare boot ids): another sandbox
has another, a memory pause keeps it (the same boot goes on), a filesystem-only pause's
resume and a resume with `on_resume="reboot"` are new boots. Through the released SDK
against a container-runtime `hearth serve`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import Sandbox

from .conftest import Hearth, served_containers

pytestmark = pytest.mark.root

BOOT_ID = "/proc/sys/kernel/random/boot_id"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-boot-id-") as info:
        yield info


def _boot_id(sandbox: Sandbox) -> str:
    boot_id = sandbox.commands.run(f"cat {BOOT_ID}").stdout.strip()
    assert UUID.fullmatch(boot_id), boot_id
    return boot_id


def test_each_sandbox_has_its_own_boot_id(sandbox: Sandbox) -> None:
    other = Sandbox.create("base", timeout=60)
    try:
        assert _boot_id(sandbox) != _boot_id(other)
    finally:
        other.kill()
    assert _boot_id(sandbox) != Path(BOOT_ID).read_text().strip()  # not the host's
    # Read-only, as the kernel's is.
    refused = sandbox.commands.run(f"echo x > {BOOT_ID}; echo $?", user="root")
    assert refused.stdout.strip() != "0"


def test_a_memory_pause_keeps_the_boot_id(sandbox: Sandbox) -> None:
    booted = _boot_id(sandbox)
    assert sandbox.pause() is True
    assert _boot_id(Sandbox.connect(sandbox.sandbox_id)) == booted


def test_a_filesystem_pause_resumes_as_a_new_boot(sandbox: Sandbox) -> None:
    booted = _boot_id(sandbox)
    assert sandbox.pause(mode="filesystem") is True
    again = Sandbox.connect(sandbox.sandbox_id)
    rebooted = _boot_id(again)
    assert rebooted != booted
    # The next filesystem-only pause is another boot again.
    assert again.pause(mode="filesystem") is True
    assert _boot_id(Sandbox.connect(sandbox.sandbox_id)) not in (booted, rebooted)


def test_a_resume_with_reboot_is_a_new_boot(sandbox: Sandbox) -> None:
    booted = _boot_id(sandbox)
    assert sandbox.pause() is True
    assert _boot_id(Sandbox.connect(sandbox.sandbox_id, on_resume="reboot")) != booted
