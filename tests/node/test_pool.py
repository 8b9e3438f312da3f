"""The warm pool of a container LocalNode: a create of the pool's shape claims a
sandbox already running, which then is the create's in every way (token, env vars, id
across a restart, pause, resume, kill); anything else starts cold; the pool refills, drops
dead members, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from hearth.node.network.policy import OFFLINE

from .conftest import ROOT_ONLY, leaks, reap, spec
from .test_pause import _envd, _run

pytestmark = ROOT_ONLY

KIND = "busybox"
SHAPE = {"cpu_count": 1, "memory_mb": 256}  # conftest.spec()'s


@dataclass
class Started:
    """What every container sandbox this test started holds on the host."""

    ids: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)  # interfaces and addresses of its slots


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[Started]:
    """Notes every container sandbox started, so that the leak checks look at this
    test's sandboxes only (other work on the host may run sandboxes of its own)."""
    from hearth.node.runtime.container.sandbox import ContainerRuntime

    seen = Started()
    start = ContainerRuntime.start

    async def noting(self, sandbox_spec, template, **kwargs):
        seen.ids.add(sandbox_spec.sandbox_id)
        sandbox = await start(self, sandbox_spec, template, **kwargs)
        seen.names.update({sandbox.slot.interface, sandbox.slot.address})
        return sandbox

    resume = ContainerRuntime.resume

    async def noting_resume(self, sandbox, sandbox_spec):
        resumed = await resume(self, sandbox, sandbox_spec)
        seen.names.update({resumed.slot.interface, resumed.slot.address})
        return resumed

    monkeypatch.setattr(ContainerRuntime, "start", noting)
    monkeypatch.setattr(ContainerRuntime, "resume", noting_resume)
    yield seen


def _leaks(data_dir: Path, seen: Started) -> dict[str, list]:
    """conftest.leaks(), of this test's sandboxes only."""
    found = leaks(data_dir)
    found["cgroups"] = [p for p in found.get("cgroups", []) if Path(p).name in seen.ids]
    found["interfaces"] = [n for n in found.get("interfaces", []) if n in seen.names]
    found["rules"] = [e for e in found.get("rules", []) if any(n in str(e) for n in seen.names)]
    # Host ids repeat across nodes (each numbers its id blocks from 0): processes are this
    # test's by their launcher's command line, or by their cgroup, checked above.
    found["processes"] = [p for p in found.get("processes", []) if str(data_dir) in p]
    return {k: v for k, v in found.items() if v}


def _no_leaks(data_dir: Path, seen: Started) -> dict[str, list]:
    """_leaks(), given a moment for processes the kernel is still tearing down."""
    for _ in range(100):  # bounded
        found = _leaks(data_dir, seen)
        if not found:
            break
        time.sleep(0.1)
    return found


def _records(data_dir: Path) -> dict[str, dict]:
    """Every sandbox record on disk, by the sandbox's own id."""
    found = {}
    for entry in (data_dir / "sandboxes").iterdir():
        with contextlib.suppress(OSError, ValueError):
            found[entry.name] = json.loads((entry / "record.json").read_text())
    return found


def _waiting(data_dir: Path) -> list[str]:
    """The own ids of the pool members nobody has claimed."""
    return [
        name
        for name, r in _records(data_dir).items()
        if r.get("pooled") and r.get("claimed_as") is None
    ]


async def _filled(node, size: int) -> None:
    for _ in range(1200):  # bounded: a member starts in well under a second
        if node.pooled().get(KIND) == size:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the pool holds {node.pooled()}, not {size} {KIND}")


async def _envs(address, token: str | None) -> httpx.Response:
    headers = {"X-Access-Token": token} if token else {}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"{_envd(address)}/envs", headers=headers)


@contextlib.asynccontextmanager
async def _pool_node(started: Started, size: int = 2, disk_mb: int | None = None) -> AsyncIterator:
    from hearth.node.local import LocalNode

    # Not under pytest's tmp_path: its parents are private to root.
    data_dir = Path(tempfile.mkdtemp(prefix="hearth-node-pool-"))
    node = LocalNode(data_dir)
    try:
        await node.warm(KIND, size=size, disk_mb=disk_mb, **SHAPE)
        await _filled(node, size)
        yield node
    finally:
        await node.close()
    assert _no_leaks(data_dir, started) == {}
    shutil.rmtree(data_dir)


async def test_a_create_of_the_pool_shape_claims_a_running_sandbox(started: Started) -> None:
    async with _pool_node(started) as node:
        data_dir = node.data_dir
        members = set(_waiting(data_dir))
        token = secrets.token_urlsafe(16)
        s = spec(envd_access_token=token, env_vars={"POOL_TEST": "claimed"})
        address = await node.create(s)

        claimed = [n for n, r in _records(data_dir).items() if r.get("claimed_as") == s.sandbox_id]
        assert len(claimed) == 1 and claimed[0] in members
        assert not (data_dir / "sandboxes" / s.sandbox_id).exists()
        assert await node.running() == [s.sandbox_id]
        assert node.address(s.sandbox_id) == address

        # The create's token, env vars and id, never the pool's.
        assert (await _envs(address, None)).status_code == 401
        envs = (await _envs(address, token)).json()
        assert envs["POOL_TEST"] == "claimed"
        assert envs["E2B_SANDBOX_ID"] == s.sandbox_id
        assert (await _run(address, token, "echo $POOL_TEST")).strip() == "claimed"
        await _run(address, token, "echo kept > /home/user/file")
        assert (await _run(address, token, "cat /home/user/file")).strip() == "kept"

        # Refilled in the background, with a sandbox of its own.
        await _filled(node, 2)
        assert len(set(_waiting(data_dir)) - members) == 1

        assert await node.kill(s.sandbox_id) is True
        assert not (data_dir / "sandboxes" / claimed[0]).exists()
        assert node.address(s.sandbox_id) is None


async def test_a_claimed_member_takes_the_network_policy_of_its_create(
    started: Started,
) -> None:
    async with _pool_node(started, size=1) as node:
        (member,) = _waiting(node.data_dir)
        s = spec(egress=OFFLINE)
        await node.create(s)
        claimed = _records(node.data_dir)[member]
        assert claimed.get("claimed_as") == s.sandbox_id
        assert claimed["egress"] == OFFLINE.to_json()
        slot = node.sandbox(s.sandbox_id).slot
        deny = node.runtime.runtime.pool.leftovers()["deny_out"]
        assert (slot.interface, "0.0.0.0/0") in deny
        assert await node.kill(s.sandbox_id)


async def test_a_create_of_another_shape_starts_cold(started: Started) -> None:
    async with _pool_node(started, size=1) as node:
        member = _waiting(node.data_dir)
        others = [
            spec(memory_mb=300),
            spec(cpu_count=2),
            spec(template="debian"),
            spec(disk_mb=1024),  # the pool's members have the default disk
        ]
        for s in others:
            await node.create(s)
            # Its own id names its directory: started for it, not claimed.
            assert _records(node.data_dir)[s.sandbox_id].get("pooled") is False
        assert _waiting(node.data_dir) == member
        for s in others:
            await node.kill(s.sandbox_id)


async def test_a_pool_of_a_templates_disk_size_serves_creates_of_that_size(
    started: Started,
) -> None:
    async with _pool_node(started, size=1, disk_mb=1024) as node:
        (member,) = _waiting(node.data_dir)
        default = spec()
        await node.create(default)
        assert _records(node.data_dir)[default.sandbox_id].get("pooled") is False
        token = secrets.token_urlsafe(16)
        sized = spec(disk_mb=1024, envd_access_token=token)
        address = await node.create(sized)
        assert _records(node.data_dir)[member].get("claimed_as") == sized.sandbox_id
        size_kib = int((await _run(address, token, "df -k / | tail -1")).split()[1])
        assert 1024 * 1024 * 0.85 < size_kib <= 1024 * 1024
        for s in (default, sized):
            assert await node.kill(s.sandbox_id)


async def test_a_dead_member_is_never_handed_out(started: Started) -> None:
    async with _pool_node(started) as node:
        data_dir = node.data_dir
        dead = _waiting(data_dir)
        for name in dead:
            os.kill(int((data_dir / "sandboxes" / name / "pid").read_text()), signal.SIGKILL)
        token = secrets.token_urlsafe(16)
        s = spec(envd_access_token=token)
        address = await node.create(s)
        # Both members were dead: the create started its own sandbox.
        assert _records(data_dir)[s.sandbox_id].get("pooled") is False
        assert (await _run(address, token, "echo ok")).strip() == "ok"
        await _filled(node, 2)
        for _ in range(100):  # bounded: the dead ones are stopped in the background
            if not set(dead) & set(_records(data_dir)):
                break
            await asyncio.sleep(0.1)
        assert not set(dead) & set(_records(data_dir))
        await node.kill(s.sandbox_id)


async def test_a_claimed_sandbox_pauses_and_resumes_under_its_api_id(started: Started) -> None:
    async with _pool_node(started, size=1) as node:
        token = secrets.token_urlsafe(16)
        s = spec(envd_access_token=token, env_vars={"POOL_TEST": "paused"})
        address = await node.create(s)
        assert _records(node.data_dir).get(s.sandbox_id) is None  # claimed, not cold
        await _run(address, token, "echo kept > /home/user/file")
        for memory in (True, False):
            assert await node.pause(s.sandbox_id, memory=memory) is memory
            assert await node.paused() == {s.sandbox_id: memory}
            address = await node.resume(s)
            assert (await _run(address, token, "cat /home/user/file")).strip() == "kept"
            assert (await _run(address, token, "echo $POOL_TEST")).strip() == "paused"
            assert (await _envs(address, None)).status_code == 401
        await node.pause(s.sandbox_id)
        assert await node.kill(s.sandbox_id) is True
        assert await node.paused() == {}


async def test_a_restarted_node_adopts_claimed_sandboxes_and_removes_waiting_ones(
    started: Started,
) -> None:
    from hearth.node.local import LocalNode

    data_dir = Path(tempfile.mkdtemp(prefix="hearth-node-pool-restart-"))
    first = LocalNode(data_dir)
    await first.warm(KIND, size=2, **SHAPE)
    await _filled(first, 2)
    token = secrets.token_urlsafe(16)
    s = spec(envd_access_token=token, env_vars={"POOL_TEST": "adopted"})
    address = await first.create(s)
    await _filled(first, 2)
    waiting = _waiting(data_dir)
    monitors = [r["monitor_pid"] for r in _records(data_dir).values()]
    # The first node "crashes": dropped without close() or detach(), its pool full.
    del first

    second = LocalNode(data_dir)
    try:
        removed = await second.start()
        assert {f"sandbox {name}" for name in waiting} <= set(removed)
        assert await second.running() == [s.sandbox_id]
        assert second.address(s.sandbox_id) == address
        assert (await _run(address, token, "echo $POOL_TEST")).strip() == "adopted"
        assert (await _envs(address, None)).status_code == 401
        assert await second.pause(s.sandbox_id) is True
        address = await second.resume(s)
        assert (await _run(address, token, "echo ok")).strip() == "ok"
        # Detached (as `hearth serve` stops), a claimed sandbox stays; pool members do not.
        await second.warm(KIND, size=1, **SHAPE)
        await _filled(second, 1)
        await second.detach()
        assert _waiting(data_dir) == []
        third = LocalNode(data_dir)
        try:
            await third.start()
            assert await third.running() == [s.sandbox_id]
        finally:
            await third.close()
    finally:
        await second.close()
        reap(monitors)
    assert _no_leaks(data_dir, started) == {}
    shutil.rmtree(data_dir)


@pytest.mark.parametrize("size", [0])
async def test_a_node_without_a_pool_starts_every_sandbox_cold(size: int, started: Started) -> None:
    from hearth.node.local import LocalNode

    data_dir = Path(tempfile.mkdtemp(prefix="hearth-node-pool-none-"))
    async with LocalNode(data_dir) as node:
        await node.warm(KIND, size=size, **SHAPE)
        s = spec()
        await node.create(s)
        assert _records(data_dir)[s.sandbox_id].get("pooled") is False
        assert node.pooled() == {KIND: 0}
    assert _no_leaks(data_dir, started) == {}
    shutil.rmtree(data_dir)
