"""Pause and resume on a container LocalNode: frozen with memory, or filesystem-only,
across a restart of the node, and killed while paused with nothing left behind."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from hearth.node.interface import PauseNotSupported, SandboxNotFound

from .conftest import ROOT_ONLY, only_files_left, reap, spec, upper_layer, wait_no_leaks

pytestmark = ROOT_ONLY

# busybox has no nohup; envd leaves a backgrounded child running once the command ends.
COUNTER = (
    "sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done'"
    " </dev/null >/dev/null 2>&1 &"
)


def _envd(address) -> str:
    return f"http://{address.host}:{address.port(49983)}"


async def _run(address, token: str, command: str) -> str:
    """Run `command` through the SDK (debug mode talks to envd directly) with `token`."""
    from e2b import AsyncSandbox, ConnectionConfig
    from packaging.version import Version

    config = ConnectionConfig(
        debug=True, sandbox_url=_envd(address), extra_sandbox_headers={"X-Access-Token": token}
    )
    sandbox = AsyncSandbox(
        sandbox_id="debug",
        sandbox_domain=None,
        envd_version=Version("0.6.13"),
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=config,
    )
    result = await sandbox.commands.run(command, user="root", timeout=30)
    return result.stdout


async def _envs_status(address, token: str | None) -> int:
    headers = {"X-Access-Token": token} if token else {}
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"{_envd(address)}/envs", headers=headers)).status_code


def _freezer_state(sandbox_id: str) -> str:
    return Path(f"/sys/fs/cgroup/freezer/hearth/{sandbox_id}/freezer.state").read_text().strip()


def _record(data_dir: Path, sandbox_id: str) -> dict:
    return json.loads((data_dir / "sandboxes" / sandbox_id / "record.json").read_text())


async def _count(address, token: str) -> int:
    return int((await _run(address, token, "cat /tmp/count 2>/dev/null; true")).strip() or 0)


async def _moves_on(address, token: str, since: int) -> bool:
    for _ in range(200):  # bounded: until the counter moves on; no timing asserted
        if await _count(address, token) > since:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_memory_pause_freezes_and_resume_continues(node) -> None:
    token = secrets.token_urlsafe(16)
    s = spec(envd_access_token=token)
    address = await node.create(s)
    try:
        await _run(address, token, COUNTER)
        assert await _moves_on(address, token, 0)
        assert await node.pause(s.sandbox_id) is True
        assert await node.paused() == {s.sandbox_id: True}
        assert s.sandbox_id not in await node.running()
        assert node.address(s.sandbox_id) is None
        assert _freezer_state(s.sandbox_id) == "FROZEN"
        assert _record(node.data_dir, s.sandbox_id)["paused"] == "memory"
        with pytest.raises(SandboxNotFound):
            await node.pause(s.sandbox_id)
        frozen_at = int((upper_layer(node.data_dir, s.sandbox_id) / "tmp/count").read_text() or 0)

        again = await node.resume(s)
        assert again == address
        assert await node.paused() == {}
        assert _record(node.data_dir, s.sandbox_id)["paused"] is None
        # The same process goes on from where it was frozen, with the same token.
        assert await _moves_on(address, token, frozen_at)
        assert await _envs_status(address, token) == 200
        assert await _envs_status(address, None) == 401
        with pytest.raises(SandboxNotFound):
            await node.resume(s)
    finally:
        assert await node.kill(s.sandbox_id)
    assert wait_no_leaks(node.data_dir) == {}


async def test_filesystem_pause_boots_again_over_the_same_files(node) -> None:
    token = secrets.token_urlsafe(16)
    s = spec(envd_access_token=token, env_vars={"GREETING": "hi"})
    address = await node.create(s)
    try:
        await _run(address, token, "echo kept > /home/user/file; cat /proc/1/stat > /tmp/boot")
        assert await node.pause(s.sandbox_id, memory=False) is False
        assert await node.paused() == {s.sandbox_id: False}
        # Nothing runs and no slot is held: only the files, on its disk (and its id
        # range), remain.
        found = wait_no_leaks(node.data_dir)
        assert only_files_left(found, s.sandbox_id), found

        address = await node.resume(s)
        assert (await _run(address, token, "cat /home/user/file")).strip() == "kept"
        assert (await _run(address, token, "echo $GREETING")).strip() == "hi"
        assert await _envs_status(address, None) == 401
    finally:
        assert await node.kill(s.sandbox_id)
    assert wait_no_leaks(node.data_dir) == {}


async def test_kill_of_a_paused_sandbox_releases_everything(node) -> None:
    frozen, stopped = spec(), spec()
    for s in (frozen, stopped):
        await node.create(s)
    await node.pause(frozen.sandbox_id)
    await node.pause(stopped.sandbox_id, memory=False)
    assert await node.kill(frozen.sandbox_id) is True
    assert await node.kill(stopped.sandbox_id) is True
    assert await node.paused() == {}
    assert await node.kill(frozen.sandbox_id) is False
    assert wait_no_leaks(node.data_dir) == {}


async def test_memory_pressure_turns_a_memory_pause_into_a_filesystem_one(node) -> None:
    token = secrets.token_urlsafe(16)
    s = spec(envd_access_token=token)
    address = await node.create(s)
    try:
        await _run(address, token, "echo kept > /home/user/file")
        await node.pause(s.sandbox_id)
        assert await node.relieve_memory(available_mb=node.memory_reserve_mb) == []
        assert await node.paused() == {s.sandbox_id: True}
        # Short of memory (as told): the frozen container is let go, its files kept.
        assert await node.relieve_memory(available_mb=0) == [s.sandbox_id]
        assert await node.paused() == {s.sandbox_id: False}
        found = wait_no_leaks(node.data_dir)
        assert only_files_left(found, s.sandbox_id), found
        address = await node.resume(s)
        assert (await _run(address, token, "cat /home/user/file")).strip() == "kept"
    finally:
        await node.kill(s.sandbox_id)
    assert wait_no_leaks(node.data_dir) == {}


async def test_a_restarted_node_adopts_paused_sandboxes() -> None:
    from hearth.node.local import LocalNode

    data_dir = Path(tempfile.mkdtemp(prefix="hearth-node-pause-"))
    token = secrets.token_urlsafe(16)
    frozen, stopped, lost = (spec(envd_access_token=token) for _ in range(3))
    first = LocalNode(data_dir)
    await first.start()
    monitors = []
    try:
        for s in (frozen, stopped, lost):
            address = await first.create(s)
            await _run(address, token, COUNTER)
            await _run(address, token, f"echo {s.sandbox_id} > /home/user/who")
            monitors.append(_record(data_dir, s.sandbox_id)["monitor_pid"])
        await first.pause(frozen.sandbox_id)
        await first.pause(stopped.sandbox_id, memory=False)
        await first.pause(lost.sandbox_id)
        await first.detach()
        # A reboot takes the frozen container of `lost` (but not its files) away.
        ContainerRuntime = first.runtime.runtime  # noqa: N806 - the runtime object
        await asyncio.to_thread(ContainerRuntime._discard, lost.sandbox_id, None)

        second = LocalNode(data_dir)
        try:
            await second.start()
            assert await second.paused() == {
                frozen.sandbox_id: True,
                stopped.sandbox_id: False,
                lost.sandbox_id: False,
            }
            assert await second.running() == []
            frozen_at = int((upper_layer(data_dir, frozen.sandbox_id) / "tmp/count").read_text())
            address = await second.resume(frozen)
            assert await _moves_on(address, token, frozen_at)
            for s in (stopped, lost):
                address = await second.resume(s)
                who = await _run(address, token, "cat /home/user/who")
                assert who.strip() == s.sandbox_id
        finally:
            await second.close()
    finally:
        reap(monitors)
    assert wait_no_leaks(data_dir, closed=True) == {}
    shutil.rmtree(data_dir)


async def test_the_isolated_runtime_pauses_with_memory_only(tmp_path) -> None:
    from hearth.node.local import LocalNode
    from hearth.node.runtime import _freezer

    if not _freezer.available():
        pytest.skip("no cgroup v1 freezer on this host")
    token = secrets.token_urlsafe(16)
    async with LocalNode(tmp_path, runtime="isolated") as node:
        s = spec(envd_access_token=token)
        address = await node.create(s)
        await _run(address, token, COUNTER)
        assert await _moves_on(address, token, 0)
        with pytest.raises(PauseNotSupported, match="container runtime"):
            await node.pause(s.sandbox_id, memory=False)
        assert await node.pause(s.sandbox_id) is True
        group = _freezer.ROOT / _freezer.PARENT / s.sandbox_id
        assert (group / "freezer.state").read_text().strip() == "FROZEN"
        address = await node.resume(s)
        before = await _count(address, token)
        assert await _moves_on(address, token, before)
        assert await _envs_status(address, None) == 401
        await node.pause(s.sandbox_id)
        assert await node.kill(s.sandbox_id) is True
        assert not group.exists()
