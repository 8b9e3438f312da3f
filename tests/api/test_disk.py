"""A sandbox's disk through the released `e2b` SDK, against a real container-runtime
`hearth serve`: its size is its template's diskSizeMB (the API's default plus the
build's minFreeDiskMb), `df` and the metrics show it, writes past it fail with "No space
left on device" while the sandbox goes on, and a kill gives the space back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import CommandExitException, Sandbox, Template
from node.conftest import leaks, wait_no_leaks

from .conftest import Hearth, served_containers

pytestmark = pytest.mark.root

EXTRA_MB = 512  # the build's minFreeDiskMb: its disk is the default plus this
NO_SPACE = "No space left on device"


@pytest.fixture(scope="module")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-disk-") as info:
        yield info


def _node_dir(hearth: Hearth) -> Path:
    return Path(hearth.database_url.removeprefix("sqlite:///")).parent / "node"


def _fails(sandbox: Sandbox, command: str) -> str:
    """Run `command`, which must fail; its stderr."""
    with pytest.raises(CommandExitException) as failed:
        sandbox.commands.run(command, user="root")
    return failed.value.stderr


def _df_kib(sandbox: Sandbox) -> tuple[int, int]:
    """Size and available KiB of the sandbox's root file system, as `df` says."""
    fields = sandbox.commands.run("df -k --output=size,avail /").stdout.splitlines()[-1].split()
    return int(fields[0]), int(fields[1])


def test_a_sandbox_disk_is_its_templates_size_and_a_write_past_it_fails(hearth) -> None:
    alias = f"disk-{uuid.uuid4().hex[:8]}"
    Template.build(
        Template().from_template("base").run_cmd("echo built > /home/user/built"),
        alias,
        min_free_disk_mb=EXTRA_MB,
    )
    sandbox = Sandbox.create(alias, timeout=300)
    node_dir = _node_dir(hearth)
    try:
        info = httpx.get(
            f"{hearth.api_url}/sandboxes/{sandbox.sandbox_id}",
            headers={"X-API-Key": hearth.api_key},
        ).json()
        disk_mb = info["diskSizeMB"]
        assert disk_mb > EXTRA_MB  # the default and the build's extra
        size, free = _df_kib(sandbox)
        assert disk_mb * 1024 * 0.85 < size <= disk_mb * 1024
        metrics = sandbox.get_metrics()
        assert metrics and metrics[-1].disk_total == size * 1024

        assert NO_SPACE in _fails(sandbox, f"fallocate -l {disk_mb * 2}M /home/user/huge")
        sandbox.files.remove("/home/user/huge")  # ext4 keeps what it allocated before
        # Most of it taken without a write, then the rest written past its end.
        sandbox.commands.run(f"fallocate -l {free - 32 * 1024}K /home/user/most", user="root")
        assert NO_SPACE in _fails(sandbox, "dd if=/dev/zero of=/home/user/rest bs=1M count=64")
        assert _df_kib(sandbox)[1] < 1024

        # The sandbox goes on, and its template's files are there.
        assert sandbox.commands.run("cat /home/user/built").stdout == "built\n"
        sandbox.files.remove("/home/user/most")
        sandbox.files.write("/home/user/after", "room again")
        assert sandbox.files.read("/home/user/after") == "room again"
        image = node_dir / "sandboxes" / sandbox.sandbox_id / "disk.img"
        assert image.is_file() and image.stat().st_blocks * 512 < 256 << 20  # sparse
    finally:
        assert sandbox.kill() is True
    assert not (node_dir / "sandboxes" / sandbox.sandbox_id).exists()
    # Its device and mounts are gone (the server's other sandboxes, a build's, keep theirs).
    left = leaks(node_dir)
    ours = [
        line
        for key in ("loop devices", "mounts (any namespace)")
        for line in left.get(key, [])
        if f"/sandboxes/{sandbox.sandbox_id}/" in line
    ]
    assert ours == [], left


def test_a_build_step_is_held_to_its_templates_disk(hearth) -> None:
    from e2b import BuildException

    alias = f"disk-build-{uuid.uuid4().hex[:8]}"
    # Past the default disk plus the build's extra, instantly (fallocate writes nothing).
    too_much = (
        Template().from_template("base").run_cmd(f"fallocate -l {EXTRA_MB * 16}M /home/user/big")
    )
    logs: list[str] = []
    with pytest.raises(BuildException):
        Template.build(
            too_much, alias, min_free_disk_mb=EXTRA_MB, on_build_logs=lambda e: logs.append(str(e))
        )
    assert any(NO_SPACE in line for line in logs), "\n".join(logs)
    # What fits is built, and nothing of the failed step's sandbox is left.
    Template.build(
        Template().from_template("base").run_cmd(f"fallocate -l {EXTRA_MB // 2}M /home/user/fits"),
        alias,
        min_free_disk_mb=EXTRA_MB,
    )
    # What is this server's alone (interfaces and cgroups may be another server's).
    found = wait_no_leaks(_node_dir(hearth))
    mine = ("sandbox dirs", "loop devices", "mounts (any namespace)", "netns pins")
    assert {k: v for k, v in found.items() if k in mine} == {}, found
