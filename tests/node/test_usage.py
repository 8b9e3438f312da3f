"""What a container LocalNode samples of its sandboxes' use (`usage()`): read on the
host, each sandbox's own vCPUs, memory limit and disk; paused sandboxes left out; and
samples taken all the while sandboxes are killed, paused and created leave nothing
behind and never fail."""

from __future__ import annotations

import asyncio
import os

import httpx

from .conftest import ROOT_ONLY, spec, wait_no_leaks

pytestmark = ROOT_ONLY

MIB = 2**20


async def test_a_sample_is_the_sandboxs_own_limits(node) -> None:
    small, large = spec(cpu_count=1, memory_mb=256, disk_mb=64), spec(cpu_count=2, memory_mb=512)
    await asyncio.gather(node.create(small), node.create(large))
    try:
        first = await node.usage()
        await asyncio.sleep(0.5)
        found = await node.usage([small.sandbox_id, large.sandbox_id, "unknown"])
        assert set(found) == {small.sandbox_id, large.sandbox_id} <= set(first)
        host_cpus = len(os.sched_getaffinity(0))
        for s, disk_mib in ((small, 64), (large, 2048)):
            usage = found[s.sandbox_id]
            assert usage.cpu_count == min(s.cpu_count, host_cpus)
            assert usage.mem_total == s.memory_mb * MIB
            assert 0 < usage.mem_used < usage.mem_total
            assert disk_mib * MIB * 0.8 < usage.disk_total <= disk_mib * MIB
            assert 0 < usage.disk_used < usage.disk_total
            assert 0 <= usage.cpu_used_pct <= 100
            assert usage.timestamp > first[s.sandbox_id].timestamp
    finally:
        await asyncio.gather(node.kill(small.sandbox_id), node.kill(large.sandbox_id))
    assert wait_no_leaks(node.data_dir) == {}


async def test_envd_inside_says_the_same_limits_as_the_host(node) -> None:
    """envd's own /metrics (what a microVM's guest reports, and what a program inside a
    container reads through lxcfs) gives the sandbox's limits, not the host's."""
    s = spec(cpu_count=1, memory_mb=384, disk_mb=128, envd_access_token="t0ken")
    address = await node.create(s)
    try:
        async with httpx.AsyncClient() as client:
            url = f"http://{address.host}:{address.port(49983)}/metrics"
            assert (await client.get(url)).status_code == 401  # envd's token guards it
            inside = (await client.get(url, headers={"X-Access-Token": "t0ken"})).json()
        outside = (await node.usage([s.sandbox_id]))[s.sandbox_id]
        assert inside["cpu_count"] == outside.cpu_count == 1
        assert inside["mem_total"] == outside.mem_total == 384 * MIB
        assert inside["disk_total"] == outside.disk_total
        assert 0 < inside["mem_used"] < inside["mem_total"]
    finally:
        await node.kill(s.sandbox_id)
    assert wait_no_leaks(node.data_dir) == {}


async def test_a_paused_sandbox_is_not_sampled(node) -> None:
    s = spec()
    await node.create(s)
    try:
        assert s.sandbox_id in await node.usage()
        await node.pause(s.sandbox_id)
        assert s.sandbox_id not in await node.usage()
    finally:
        await node.kill(s.sandbox_id)
    assert await node.usage([s.sandbox_id]) == {}
    assert wait_no_leaks(node.data_dir) == {}


async def test_sampling_through_kills_pauses_and_creates_leaves_nothing(node) -> None:
    """Samples taken without pause while sandboxes come and go: each answer is a dict
    of live sandboxes' samples, and every teardown releases everything."""
    stop = asyncio.Event()
    rounds = 0

    async def sample_forever() -> None:
        nonlocal rounds
        while not stop.is_set():
            found = await node.usage()
            assert all(u.mem_total > 0 for u in found.values())
            rounds += 1
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample_forever())
    try:
        for _ in range(3):
            specs = [spec(disk_mb=32) for _ in range(4)]
            await asyncio.gather(*(node.create(s) for s in specs))
            await node.pause(specs[0].sandbox_id)
            await asyncio.gather(*(node.kill(s.sandbox_id) for s in specs))
    finally:
        stop.set()
        await sampler  # raises what a sample raised
    assert rounds > 0
    assert wait_no_leaks(node.data_dir) == {}
