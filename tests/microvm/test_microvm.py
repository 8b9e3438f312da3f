"""The microvm runtime end to end: clones of a template snapshot driven by the real e2b
SDK, fresh clock and entropy after every restore, pause and resume with and without
memory, a restarted node adopting running VMs and paused ones, kill, crashes and
cancelled creates releasing everything."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from datetime import UTC, datetime

import pytest
from e2b.exceptions import AuthenticationException

from hearth.node.interface import SandboxNotFound
from hearth.node.network.policy import OFFLINE
from hearth.tls import LocalCA

from .conftest import (
    COUNTER,
    MICROVM,
    build_started,
    close_restarted,
    count,
    leaks,
    qemu_processes,
    run,
    sdk,
    spec,
    wait_no_leaks,
)

pytestmark = MICROVM


async def test_commands_files_env_and_clock_through_the_sdk(node):
    s = spec(env_vars={"GREETING": "hello from the host"})
    address = await node.create(s)
    try:
        sandbox = sdk(address, s.envd_access_token)
        result = await sandbox.commands.run("echo $GREETING; uname -r; date +%s", timeout=120)
        greeting, release, stamp = result.stdout.split("\n")[:3]
        assert greeting == "hello from the host"
        assert release == node.runtime.kernel.release
        # The snapshot is older than this clone: envd set the clock from /init.
        assert abs(int(stamp) - datetime.now(UTC).timestamp()) < 60
        await sandbox.files.write("/home/user/notes.txt", "written through the SDK")
        assert await sandbox.files.read("/home/user/notes.txt") == "written through the SDK"
        listed = await sandbox.files.list("/home/user")
        assert "notes.txt" in [e.name for e in listed]
    finally:
        assert await node.kill(s.sandbox_id)
    assert await wait_no_leaks(node) == {}


async def test_the_guest_trusts_the_local_ca(node, data_dir):
    """The CA whose certificates the proxy and egress present joins the guest's system
    bundle (from /init's caBundle) once, however many restores' /inits repeat it. The
    session's template has no bundle (nothing in it trusts a CA): the test gives it one."""
    s = spec()
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    ca = LocalCA.load_or_create(data_dir / "tls").cert_pem.strip()  # the node's
    address = await node.create(s)
    try:
        await run(address, s.envd_access_token, f"mkdir -p /etc/ssl/certs && : > {bundle}")
        for _ in range(2):
            await node.pause(s.sandbox_id, memory=True)
            address = await node.resume(s)
            assert (await run(address, s.envd_access_token, f"cat {bundle}")).count(ca) == 1
    finally:
        assert await node.kill(s.sandbox_id)


async def test_clones_get_their_own_entropy_and_token(node):
    a, b = spec(), spec()
    addresses = await asyncio.gather(node.create(a), node.create(b))
    try:
        assert addresses[0].host != addresses[1].host
        read = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
        outs = await asyncio.gather(
            run(addresses[0], a.envd_access_token, read),
            run(addresses[1], b.envd_access_token, read),
        )
        assert len(outs[0]) == 64 and outs[0] != outs[1]
        # Each clone answers only its own token.
        with pytest.raises(AuthenticationException):
            await run(addresses[0], b.envd_access_token, "true")
    finally:
        await asyncio.gather(node.kill(a.sandbox_id), node.kill(b.sandbox_id))
    assert await wait_no_leaks(node) == {}


async def test_pause_with_memory_keeps_a_running_process(node):
    s = spec()
    address = await node.create(s)
    try:
        await run(address, s.envd_access_token, COUNTER)
        await asyncio.sleep(2)
        before, pid = await count(address, s.envd_access_token)
        assert await node.pause(s.sandbox_id, memory=True) is True
        assert node.address(s.sandbox_id) is None
        assert await node.paused() == {s.sandbox_id: True}
        directory = node.runtime.sandboxes_dir / s.sandbox_id
        assert (directory / "memory.state").is_file()
        # Nothing but files is held while paused: no QEMU, no slot.
        assert qemu_processes(directory) == []
        address = await node.resume(s)
        after, same_pid = await count(address, s.envd_access_token)
        assert same_pid == pid and after >= before
        await asyncio.sleep(1)
        later, _ = await count(address, s.envd_access_token)
        assert later > after
        assert not (directory / "memory.state").exists()
    finally:
        await node.kill(s.sandbox_id)
    assert await wait_no_leaks(node) == {}


async def test_pause_without_memory_keeps_files_and_boots_again(node):
    s = spec()
    address = await node.create(s)
    try:
        await run(address, s.envd_access_token, "echo kept > /root/kept.txt")
        assert await node.pause(s.sandbox_id, memory=False) is False
        assert await node.paused() == {s.sandbox_id: False}
        address = await node.resume(s)
        assert (await run(address, s.envd_access_token, "cat /root/kept.txt")).strip() == "kept"
    finally:
        await node.kill(s.sandbox_id)
    assert await wait_no_leaks(node) == {}


async def test_the_disk_holds_the_templates_disk_size(node):
    """A template's diskSizeMB is what the guest may write on top of its files: df says
    so, and a write past it fails with ENOSPC inside the VM."""
    s = spec(disk_mb=300)
    address = await node.create(s)
    try:
        df = await run(address, s.envd_access_token, "df -Pm / | tail -1")
        size_mb, used_mb, avail_mb = (int(f) for f in df.split()[1:4])
        assert 250 <= avail_mb <= 300 + used_mb // 4, df
        assert size_mb < used_mb + used_mb // 4 + 300 + 64, df
        past = f"fallocate -l {avail_mb + 32}M /root/big 2>&1; echo rc=$?"
        out = await run(address, s.envd_access_token, past)
        assert "No space left on device" in out and "rc=1" in out, out
        within = "rm -f /root/big; fallocate -l 100M /root/ok && echo written"
        assert (await run(address, s.envd_access_token, within)).strip() == "written"
    finally:
        assert await node.kill(s.sandbox_id)
    assert await wait_no_leaks(node) == {}


async def test_kill_while_paused_removes_its_state(node):
    s = spec()
    await node.create(s)
    await node.pause(s.sandbox_id, memory=True)
    assert await node.kill(s.sandbox_id)
    assert not (node.runtime.sandboxes_dir / s.sandbox_id).exists()
    with pytest.raises(SandboxNotFound):
        await node.resume(s)
    assert await wait_no_leaks(node) == {}


async def test_concurrent_creates_and_kills(node):
    specs = [spec() for _ in range(3)]
    addresses = await asyncio.gather(*(node.create(s) for s in specs))
    try:
        outs = await asyncio.gather(
            *(
                run(a, s.envd_access_token, "echo $E2B_SANDBOX_ID")
                for a, s in zip(addresses, specs, strict=True)
            )
        )
        assert [o.strip() for o in outs] == [s.sandbox_id for s in specs]
    finally:
        await asyncio.gather(*(node.kill(s.sandbox_id) for s in specs))
    assert await wait_no_leaks(node) == {}


async def test_a_crashed_qemu_releases_what_it_held(node):
    s = spec()
    await node.create(s)
    vm = node.sandbox(s.sandbox_id)
    os.kill(vm.vmm.pid, signal.SIGKILL)
    for _ in range(100):
        if not leaks(node):
            break
        await asyncio.sleep(0.1)
    assert leaks(node) == {}
    assert await node.kill(s.sandbox_id)  # the node still knew it; kill is harmless


async def test_offline_sandbox_is_marked_offline(node):
    s = spec(egress=OFFLINE)
    await node.create(s)
    try:
        vm = node.sandbox(s.sandbox_id)
        assert (vm.slot.interface, "0.0.0.0/0") in node.runtime.network.leftovers()["deny_out"]
    finally:
        await node.kill(s.sandbox_id)
    assert await wait_no_leaks(node) == {}


async def test_a_restarted_node_adopts_running_vms_and_resumes_paused_ones(node, tmp_path):
    from hearth.node.local import LocalNode

    # Addresses of its own: the SDK keeps connections alive per address in this process,
    # and one to an address the session's node used before would reach another guest,
    # which resets it.
    POOL = "10.218.0.0/16"  # noqa: N806

    data_dir = tmp_path / "node"
    first = LocalNode(data_dir, runtime="microvm", network_pool=POOL)
    second = None
    try:
        await first.start()
        await first.runtime.vmms.resize(0)
        s, kept = spec(), spec()
        address = await first.create(s)
        kept_address = await first.create(kept)
        await run(address, s.envd_access_token, COUNTER)
        await asyncio.sleep(2)
        before, pid = await count(address, s.envd_access_token)
        await first.pause(s.sandbox_id, memory=True)
        # The node process exits; VMs and the paused state stay. (Its QMP connection
        # goes with a real process; QEMU serves one client at a time.)
        await first.sandbox(kept.sandbox_id).vmm.disconnect()
        await first.detach()

        second = LocalNode(data_dir, runtime="microvm", network_pool=POOL)
        await second.start()
        assert await second.running() == [kept.sandbox_id]
        assert second.address(kept.sandbox_id) == kept_address
        assert (await run(kept_address, kept.envd_access_token, "echo still")).strip() == "still"
        assert await second.paused() == {s.sandbox_id: True}
        address = await second.resume(s)
        after, same_pid = await count(address, s.envd_access_token)
        assert same_pid == pid and after >= before
    finally:
        await close_restarted(second or first, data_dir, POOL)


@pytest.mark.parametrize("after", [0.0, 0.05, 0.2, 0.4])
async def test_a_create_given_up_midway_leaves_nothing(node, after):
    # Cancelled at different points: taking a VMM, loading the state, envd's /init.
    s = spec()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(node.create(s), after)
        await node.kill(s.sandbox_id)  # it made it in time
    assert await wait_no_leaks(node) == {}
    assert node.address(s.sandbox_id) is None


async def test_warm_takes_the_snapshot_and_prespawns_its_vmms(node):
    from hearth.node.runtime.microvm.snapshot import snapshot_complete

    # A shape no other test uses, so its snapshot is taken here, ahead of any create.
    await node.warm("debian", cpu_count=1, memory_mb=384, size=1)
    driver = node.runtime
    for _ in range(1200):  # bounded: until the background work is done; no timing asserted
        known = [s for key, s in driver._snapshots.items() if key.endswith("/1/384/None")]
        if known and snapshot_complete(known[0]) and driver.vmms._ready.get(known[0].key):
            break
        await asyncio.sleep(0.1)
    assert known and snapshot_complete(known[0])
    assert driver.vmms._ready.get(known[0].key), "no VMM was pre-spawned for the snapshot"
    s = spec(memory_mb=384)
    address = await node.create(s)  # served by the pre-spawned VMM
    try:
        assert (await run(address, s.envd_access_token, "echo warm")).strip() == "warm"
    finally:
        await node.kill(s.sandbox_id)


async def test_a_templates_start_command_is_in_its_snapshot(node):
    """As E2B's template snapshots: the start command ran and was ready before the
    snapshot, so every clone has the same process, and none starts it again."""
    artifact = await build_started(node)
    clones = [spec(template_id="started", artifact=artifact) for _ in range(2)]
    seen = []
    try:
        for s in clones:
            address = await node.create(s)
            out = await run(address, s.envd_access_token, "cat /tmp/started; pgrep -x sleep")
            seen.append(out.split())
    finally:
        for s in clones:
            await node.kill(s.sandbox_id)
    started, running = seen[0]
    assert started == running  # the snapshot's process, still the one that started
    assert seen[1] == seen[0]  # the same in every clone: not started again
    assert await wait_no_leaks(node) == {}
