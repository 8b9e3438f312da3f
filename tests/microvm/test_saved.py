"""Snapshots of microVM sandboxes (the driver's saved states) and the creates that
restore them: with memory a process goes on in every copy, without it the copies boot
over the files (and start the template's start command again); a forgotten state goes
once its last user does, also across a restart of the node; nothing leaks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import replace

import pytest
from e2b.exceptions import AuthenticationException

from .conftest import (
    COUNTER,
    MICROVM,
    build_started,
    close_restarted,
    count,
    run,
    spec,
    wait_no_leaks,
)

pytestmark = MICROVM

ENTROPY = "head -c16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


def _saved_dirs(driver) -> list[str]:
    return sorted(os.listdir(driver.saved_dir))


async def test_a_snapshot_with_memory_goes_on_in_every_copy(node):
    driver = node.runtime
    source = spec()
    address = await node.create(source)
    token = source.envd_access_token
    copies = [spec(), spec()]
    started = []
    paused = None
    try:
        await run(address, token, f"echo before > /root/before.txt; {COUNTER}")
        await asyncio.sleep(2)
        before, pid = await count(address, token)
        boot_id = await run(address, token, BOOT_ID)
        held = node.sandbox(source.sandbox_id)
        t0 = time.monotonic()
        name, kept = await driver.snapshot(held, memory=True)
        took = time.monotonic() - t0
        assert kept is True and driver.has_saved(name)
        print(f"\nsnapshot with memory ({driver.accel}): {took * 1000:.0f} ms")

        # The source went on: the same process, counting.
        at_snapshot, same = await count(address, token)
        assert same == pid and at_snapshot >= before
        await asyncio.sleep(1)
        assert (await count(address, token))[0] > at_snapshot
        # Its disk too (QEMU took it back from the migration that saved the VM).
        out = await run(
            address, token, "echo after > /root/after.txt && sync && cat /root/after.txt"
        )
        assert out.strip() == "after"

        artifact = replace(held.artifact, saved=name, memory=True)
        copies = [replace(s, artifact=artifact) for s in copies]
        t0 = time.monotonic()
        started = list(await asyncio.gather(*(driver.start(s, []) for s in copies)))
        print(f"two restores to envd ready: {(time.monotonic() - t0) * 1000:.0f} ms")
        for vm in started:
            print(f"restore {vm.sandbox_id}: {vm.timings}")
        firsts = []
        for vm, s in zip(started, copies, strict=True):
            assert vm.record.snapshot == str(driver.saved_dir / name)
            assert vm.artifact == artifact
            value, same = await count(vm.address, s.envd_access_token)
            assert same == pid and value >= before
            firsts.append(value)
            out = await run(vm.address, s.envd_access_token, "cat /root/before.txt")
            assert out.strip() == "before"
            assert await run(vm.address, s.envd_access_token, BOOT_ID) == boot_id
            ids = await run(vm.address, s.envd_access_token, "echo $E2B_SANDBOX_ID")
            assert ids.strip() == s.sandbox_id
            # Its own token, not the source's.
            with pytest.raises(AuthenticationException):
                await run(vm.address, token, "true")
        await asyncio.sleep(1)
        for vm, s, first in zip(started, copies, firsts, strict=True):
            assert (await count(vm.address, s.envd_access_token))[0] > first
        pairs = zip(started, copies, strict=True)
        entropy = await asyncio.gather(
            *(run(v.address, s.envd_access_token, ENTROPY) for v, s in pairs)
        )
        assert len(entropy[0]) == 32 and entropy[0] != entropy[1]
        # Each copy has its own disk.
        await run(started[0].address, copies[0].envd_access_token, "echo mine > /root/own.txt")
        out = await run(started[1].address, copies[1].envd_access_token, "ls /root")
        assert "own.txt" not in out.split()

        # Forgotten while its copies run: it stays until the last one is gone, paused
        # ones included (a filesystem-only resume boots over the saved disk).
        await driver.forget_saved([name])
        assert not driver.has_saved(name)
        assert name in _saved_dirs(driver)
        first_copy = started.pop(0)
        await first_copy.stop()
        assert name in _saved_dirs(driver)
        paused = await started.pop().pause(memory=True)
        assert name in _saved_dirs(driver)
        await paused.discard()
        assert name not in _saved_dirs(driver)

        # The source still counts.
        assert (await count(address, token))[0] > at_snapshot
    finally:
        await asyncio.gather(*(vm.stop() for vm in started))
        if paused is not None:
            await paused.discard()
        await node.kill(source.sandbox_id)
    assert await wait_no_leaks(node) == {}
    assert _saved_dirs(driver) == []


async def test_a_snapshot_without_memory_boots_over_its_files(node):
    """Of a running sandbox (synced, stopped for the copy, going on) and of a paused one
    (memory asked of a filesystem-only pause: kept without). Their copies boot cold and
    start the template's start command again."""
    driver = node.runtime
    artifact = await build_started(node)
    source = spec(template_id="started", artifact=artifact)
    address = await node.create(source)
    token = source.envd_access_token
    started = []
    paused = None
    names: list[str] = []
    try:
        await run(address, token, "echo first > /root/first.txt")
        held = node.sandbox(source.sandbox_id)
        running_name, kept = await driver.snapshot(held, memory=False)
        names.append(running_name)
        assert kept is False
        # It went on, and what it writes now is not in the snapshot.
        await run(address, token, "echo second > /root/second.txt")
        paused = await held.pause(memory=False)
        paused_name, kept = await driver.snapshot(paused, memory=True)
        names.append(paused_name)
        assert kept is False and paused.record.state == "paused"
        copies = [
            spec(template_id="started", artifact=replace(artifact, saved=n, memory=False))
            for n in names
        ]
        t0 = time.monotonic()
        started = list(await asyncio.gather(*(driver.start(s, []) for s in copies)))
        print(f"\ntwo cold restores to ready: {(time.monotonic() - t0) * 1000:.0f} ms")
        listing = []
        for vm, s in zip(started, copies, strict=True):
            assert vm.timings["vmm"] == "cold boot"
            out = await run(vm.address, s.envd_access_token, "ls /root; pgrep -x sleep")
            listing.append(out.split())
        # The start command runs again (a cold boot has no processes of its own).
        assert all(len(seen) >= 2 and seen[-1].isdigit() for seen in listing)
        assert "first.txt" in listing[0] and "second.txt" not in listing[0]
        assert "first.txt" in listing[1] and "second.txt" in listing[1]
    finally:
        await asyncio.gather(*(vm.stop() for vm in started))
        if paused is not None:
            await paused.discard()
        await node.kill(source.sandbox_id)
        await driver.forget_saved(names)
    assert await wait_no_leaks(node) == {}
    assert _saved_dirs(driver) == []


async def test_snapshots_and_restores_given_up_midway_leave_nothing(node):
    """Cancelled at different points (stopping the guest, saving it, copying its disk;
    making the overlay, loading the state, envd's /init): the source goes on, and no
    directory, QEMU or slot remains."""
    driver = node.runtime
    source = spec()
    address = await node.create(source)
    token = source.envd_access_token
    names = []
    try:
        await run(address, token, COUNTER)
        await asyncio.sleep(2)
        held = node.sandbox(source.sandbox_id)
        for after in (0.0, 0.05, 0.2, 0.4):
            with contextlib.suppress(TimeoutError):
                names.append((await asyncio.wait_for(driver.snapshot(held, True), after))[0])
            assert [d for d in _saved_dirs(driver) if d.startswith(".")] == []
            first, _ = await count(address, token)
            await asyncio.sleep(0.5)
            assert (await count(address, token))[0] > first
        name, _ = await driver.snapshot(held, memory=True)
        names.append(name)
        artifact = replace(held.artifact, saved=name, memory=True)
        for after in (0.0, 0.05, 0.2, 0.4):
            copy = spec(artifact=artifact)
            try:
                vm = await asyncio.wait_for(driver.start(copy, []), after)
            except TimeoutError:
                pass
            else:
                await vm.stop()
            assert not (driver.sandboxes_dir / copy.sandbox_id).exists()
    finally:
        await node.kill(source.sandbox_id)
        await driver.forget_saved(names)
    assert await wait_no_leaks(node) == {}
    assert _saved_dirs(driver) == []


async def test_a_failed_restore_leaves_nothing(node):
    driver = node.runtime
    debian = await node.builtin("debian")
    missing = spec(artifact=replace(debian, saved="s" + "0" * 24, memory=True))
    with pytest.raises(RuntimeError):
        await driver.start(missing, [])
    assert await wait_no_leaks(node) == {}


async def test_a_restored_sandbox_survives_a_restart_and_its_state_waits_for_it(node, tmp_path):
    """A copy adopted by a restarted node, paused to its files and resumed (a cold boot
    over the chain that holds the saved disk); the state, forgotten before the restart,
    goes with the copy's kill."""
    from hearth.node.local import LocalNode

    POOL = "10.219.0.0/16"  # noqa: N806  (its own addresses: see test_microvm's restart)
    data_dir = tmp_path / "node"
    first = LocalNode(data_dir, runtime="microvm", network_pool=POOL)
    second = None
    try:
        await first.start()
        await first.runtime.vmms.resize(0)
        source = spec()
        address = await first.create(source)
        await run(address, source.envd_access_token, "echo kept > /root/kept.txt")
        held = first.sandbox(source.sandbox_id)
        name, _ = await first.runtime.snapshot(held, memory=True)
        await first.kill(source.sandbox_id)
        copy = spec(artifact=replace(held.artifact, saved=name, memory=True))
        await first.runtime.start(copy, [])
        await first.runtime.forget_saved([name])
        assert name in _saved_dirs(first.runtime)
        await first.detach()  # the node process exits; the VMs stay

        second = LocalNode(data_dir, runtime="microvm", network_pool=POOL)
        await second.start()
        assert await second.running() == [copy.sandbox_id]
        assert name in _saved_dirs(second.runtime)
        assert await second.pause(copy.sandbox_id, memory=False) is False
        address = await second.resume(copy)
        out = await run(address, copy.envd_access_token, "cat /root/kept.txt")
        assert out.strip() == "kept"
        assert name in _saved_dirs(second.runtime)
        assert await second.kill(copy.sandbox_id)
        assert _saved_dirs(second.runtime) == []
    finally:
        await close_restarted(second or first, data_dir, POOL)
