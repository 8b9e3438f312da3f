"""Each container sandbox's files live on a disk of its own, bounded by its size: `df`
inside shows it, a write past it fails with ENOSPC while the sandbox goes on, the host
gives it no more than it writes (the image is sparse), and a kill, a failed create, a
pause, a restart of the node (or of the host), a snapshot and a build's commit all keep
or release it as they should, loop device and image included."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from hearth.node.disk import overlay_disk
from hearth.node.guest import envd_client

from .conftest import ROOT_ONLY, leaks, only_files_left, reap, spec, upper_layer, wait_no_leaks

pytestmark = ROOT_ONLY

MiB = 1 << 20
DISK_MB = 64
NO_SPACE = "No space left on device"


async def _sh(at, command: str) -> envd_client.Finished:
    """Run a shell command as root in the sandbox `at` (its address, or its envd's
    URL); its exit code and output."""
    url = at if isinstance(at, str) else f"http://{at.host}:{at.port(envd_client.ENVD_PORT)}"
    return await envd_client.run(url, ["/bin/sh", "-c", command], user="root", cwd="/")


async def _ok(at, command: str) -> str:
    done = await _sh(at, command)
    assert done.exit_code == 0, done.output
    return done.output


async def _df_kib(at, path: str = "/") -> tuple[int, int]:
    """Size and available KiB of the file system of `path`, as `df` in the sandbox says."""
    line = (await _ok(at, f"df -k {path}")).strip().splitlines()[-1].split()
    return int(line[1]), int(line[3])


def _directory(data_dir: Path, sandbox_id: str) -> Path:
    return data_dir / "sandboxes" / sandbox_id


def _host_bytes(tree: Path) -> int:
    """Bytes the host has allocated to the files under `tree` (what `du` counts), not
    descending into mounts (the sandbox's disk is counted as its image)."""
    device = tree.stat().st_dev
    total = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == device]
        for name in filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _loop_of(data_dir: Path, sandbox_id: str) -> list[str]:
    image = _directory(data_dir, sandbox_id) / overlay_disk.IMAGE
    return [line for line in leaks(data_dir).get("loop devices", []) if line.endswith(str(image))]


async def test_df_shows_the_disk_and_writes_past_it_fail_while_the_sandbox_goes_on(
    node,
) -> None:
    s = spec(disk_mb=DISK_MB)
    address = await node.create(s)
    try:
        size, free = await _df_kib(address)
        # The disk, less ext4's own tables and journal; not the host's hundreds of GB.
        assert DISK_MB * 1024 * 0.85 < size <= DISK_MB * 1024
        assert free > DISK_MB * 1024 * 0.8
        # /tmp is the same disk (not a tmpfs of the host's).
        assert (await _df_kib(address, "/tmp"))[0] == size

        # Written through to the host's disk (O_DIRECT), not only into the page cache.
        big = f"dd if=/dev/zero of=/home/user/big bs=1M count={DISK_MB * 2} oflag=direct"
        done = await _sh(address, big)
        assert done.exit_code != 0
        assert NO_SPACE in done.output
        assert (await _df_kib(address))[1] < 1024  # full

        # The host gave it what it wrote and no more than its disk: the image is all it
        # holds there.
        directory = _directory(node.data_dir, s.sandbox_id)
        image = directory / overlay_disk.IMAGE
        assert image.stat().st_size == DISK_MB * MiB
        assert image.stat().st_blocks * 512 > DISK_MB * MiB * 0.8
        assert _host_bytes(directory) <= DISK_MB * MiB + MiB

        # It goes on: commands run, and the space comes back as files go.
        assert (await _ok(address, "echo alive")).strip() == "alive"
        await _ok(address, "rm /home/user/big && dd if=/dev/zero of=/tmp/again bs=1M count=8")
        assert (await _ok(address, "wc -c < /tmp/again")).strip() == str(8 * MiB)
    finally:
        assert await node.kill(s.sandbox_id)
    assert wait_no_leaks(node.data_dir) == {}


async def test_fallocate_past_the_disk_fails_and_takes_nothing_from_the_host(node) -> None:
    s = spec(template="debian", disk_mb=DISK_MB)
    address = await node.create(s)
    try:
        done = await _sh(address, f"fallocate -l {DISK_MB * 2}M /home/user/huge")
        assert done.exit_code != 0 and NO_SPACE in done.output, done.output
        # ext4 keeps what it allocated before it ran out: the file goes, and its room.
        await _ok(address, f"rm /home/user/huge && fallocate -l {DISK_MB // 2}M /home/user/half")
        directory = _directory(node.data_dir, s.sandbox_id)
        # An allocation inside is no write to the host's disk (the extents are unwritten).
        assert _host_bytes(directory) < DISK_MB * MiB // 4
    finally:
        assert await node.kill(s.sandbox_id)
    assert wait_no_leaks(node.data_dir) == {}


async def test_kill_detaches_the_loop_device_and_removes_the_image(node) -> None:
    first, second = spec(disk_mb=DISK_MB), spec(disk_mb=DISK_MB)
    address = await node.create(first)
    try:
        await _ok(address, "dd if=/dev/zero of=/home/user/data bs=1M count=16 conv=fsync")
        # Started while the first's disk is mounted: its launcher's mount namespace holds
        # a copy of that mount, which must not keep the disk (or its device) alive.
        other = await node.create(second)
        image = _directory(node.data_dir, first.sandbox_id) / overlay_disk.IMAGE
        assert len(_loop_of(node.data_dir, first.sandbox_id)) == 1
        assert image.stat().st_blocks * 512 >= 16 * MiB
        assert await node.kill(first.sandbox_id)
        assert _loop_of(node.data_dir, first.sandbox_id) == []
        assert not image.exists()
        mounts = leaks(node.data_dir).get("mounts (any namespace)", [])
        assert not [m for m in mounts if first.sandbox_id in m], mounts
        assert (await _ok(other, "echo alive")).strip() == "alive"
    finally:
        await asyncio.gather(node.kill(first.sandbox_id), node.kill(second.sandbox_id))
    assert wait_no_leaks(node.data_dir) == {}


async def test_a_failed_create_leaves_no_disk(node) -> None:
    from hearth.node.runtime.container import ContainerError

    too_small = spec(disk_mb=1)
    with pytest.raises(overlay_disk.DiskError, match="too small"):
        await node.create(too_small)
    assert wait_no_leaks(node.data_dir) == {}
    # The disk is made and mounted, then the container ends (4 MiB is too little).
    dies = spec(memory_mb=4, disk_mb=DISK_MB)
    with pytest.raises(ContainerError, match="exited"):
        await node.create(dies)
    assert wait_no_leaks(node.data_dir) == {}


async def test_a_filesystem_pause_keeps_the_disk_and_resume_boots_over_it(node) -> None:
    s = spec(disk_mb=DISK_MB)
    address = await node.create(s)
    try:
        await _ok(address, "echo kept > /home/user/file; dd if=/dev/zero of=/tmp/f bs=1M count=8")
        size, _ = await _df_kib(address)
        assert await node.pause(s.sandbox_id, memory=False) is False
        found = wait_no_leaks(node.data_dir)
        assert only_files_left(found, s.sandbox_id), found
        assert (upper_layer(node.data_dir, s.sandbox_id) / "home/user/file").read_text() == "kept\n"

        address = await node.resume(s)
        assert (await _ok(address, "cat /home/user/file")).strip() == "kept"
        assert (await _df_kib(address))[0] == size
        done = await _sh(address, f"dd if=/dev/zero of=/home/user/big bs=1M count={DISK_MB}")
        assert done.exit_code != 0 and NO_SPACE in done.output
    finally:
        assert await node.kill(s.sandbox_id)
    assert wait_no_leaks(node.data_dir) == {}


async def test_a_memory_pause_keeps_the_disk(node) -> None:
    s = spec(disk_mb=DISK_MB)
    address = await node.create(s)
    try:
        await _ok(address, "echo kept > /home/user/file")
        assert await node.pause(s.sandbox_id) is True
        assert len(_loop_of(node.data_dir, s.sandbox_id)) == 1
        address = await node.resume(s)
        assert (await _ok(address, "cat /home/user/file")).strip() == "kept"
    finally:
        assert await node.kill(s.sandbox_id)
    assert wait_no_leaks(node.data_dir) == {}


async def test_a_restarted_node_adopts_disks_and_a_rebooted_host_attaches_them_again() -> None:
    from hearth.node.local import LocalNode

    data_dir = Path(tempfile.mkdtemp(prefix="hearth-node-disk-"))
    running, paused, rebooted = (spec(disk_mb=DISK_MB) for _ in range(3))
    first = LocalNode(data_dir)
    await first.start()
    monitors = []
    try:
        for s in (running, paused, rebooted):
            address = await first.create(s)
            await _ok(address, f"echo {s.sandbox_id} > /home/user/who")
            record = json.loads((_directory(data_dir, s.sandbox_id) / "record.json").read_text())
            monitors.append(record["monitor_pid"])
        await first.pause(paused.sandbox_id, memory=False)
        await first.pause(rebooted.sandbox_id, memory=False)
        await first.detach()
        # A reboot of the host: the disk of `rebooted` is unmounted, its device gone.
        directory = _directory(data_dir, rebooted.sandbox_id)
        await asyncio.to_thread(
            overlay_disk.release,
            directory / overlay_disk.IMAGE,
            directory / overlay_disk.MOUNTPOINT,
        )
        assert _loop_of(data_dir, rebooted.sandbox_id) == []

        second = LocalNode(data_dir)
        try:
            await second.start()
            assert await second.running() == [running.sandbox_id]
            assert await second.paused() == {paused.sandbox_id: False, rebooted.sandbox_id: False}
            assert len(_loop_of(data_dir, rebooted.sandbox_id)) == 1  # attached again
            address = second.address(running.sandbox_id)
            assert address is not None
            assert (await _ok(address, "cat /home/user/who")).strip() == running.sandbox_id
            for s in (paused, rebooted):
                address = await second.resume(s)
                assert (await _ok(address, "cat /home/user/who")).strip() == s.sandbox_id
                size, _ = await _df_kib(address)
                assert size <= DISK_MB * 1024
        finally:
            await second.close()
    finally:
        reap(monitors)
    assert wait_no_leaks(data_dir) == {}
    shutil.rmtree(data_dir)


async def test_a_snapshot_of_a_sandbox_with_data_starts_sandboxes_with_disks_of_their_own(
    node,
) -> None:
    source = spec(disk_mb=DISK_MB)
    address = await node.create(source)
    copies = []
    try:
        await _ok(
            address,
            "echo snap > /home/user/note; dd if=/dev/urandom of=/home/user/blob bs=1M count=24;"
            " md5sum /home/user/blob > /home/user/blob.md5",
        )
        artifact = await node.snapshot(source.sandbox_id)
        # The source goes on, its disk as it was.
        assert (await _ok(address, "cat /home/user/note")).strip() == "snap"
        for _ in range(2):
            copy = spec(artifact=artifact, disk_mb=DISK_MB)
            copies.append(copy)
            there = await node.create(copy)
            assert (await _ok(there, "cat /home/user/note")).strip() == "snap"
            await _ok(there, "md5sum -c /home/user/blob.md5")
            # The snapshot's files are a layer under it: its own disk starts empty.
            size, free = await _df_kib(there)
            assert size - free < 4096
    finally:
        await asyncio.gather(*(node.kill(s.sandbox_id) for s in [source, *copies]))
    await node.forget_artifacts([], [artifact])
    assert wait_no_leaks(node.data_dir) == {}


@pytest.mark.parametrize("disk_mb", [None, 1024])  # a built-in's bound; a template's
async def test_a_build_sandbox_is_bounded_and_commits_its_layer_off_its_disk(
    node, disk_mb: int | None
) -> None:
    from hearth.node.local import BUILD_DISK_MB

    artifact = await node.builtin("busybox")
    build = await node._open_build_sandbox(node._layer_paths(artifact), 1, 256, disk_mb)
    dest = node.data_dir / f"commit-{secrets.token_hex(4)}"
    bound = disk_mb or BUILD_DISK_MB
    try:
        size, _ = await _df_kib(build.url)
        assert bound * 1024 * 0.85 < size <= bound * 1024
        await _ok(build.url, "mkdir -p /opt/made && echo built > /opt/made/file")
        await build.commit(dest)
        # The step's changes, owned by the ids they had inside (root: the host's 0).
        assert (dest / "opt/made/file").read_text() == "built\n"
        assert (dest / "opt/made/file").stat().st_uid == 0
    finally:
        await build.stop()
        shutil.rmtree(dest, ignore_errors=True)
    assert wait_no_leaks(node.data_dir) == {}
