"""Container sandboxes on a LocalNode, driven through envd and the real E2B SDK."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from hearth.node.network.policy import OFFLINE

from .conftest import ROOT_ONLY, HostServer, leaks, reap, spec, upper_layer, wait_no_leaks

pytestmark = ROOT_ONLY


async def _health(address) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.get(f"http://{address.host}:{address.port(49983)}/health")
        return r.status_code


async def _sdk(sdk_env, address):
    from e2b import AsyncSandbox

    sdk_env(address)
    return await AsyncSandbox.create()


async def _run(sandbox, command: str, **kwargs):
    """Run `command`, returning the result whatever its exit code."""
    from e2b import CommandExitException

    try:
        return await sandbox.commands.run(command, timeout=60, **kwargs)
    except CommandExitException as e:
        return e


def _http_get(target: str) -> str:
    """A shell command that prints the raw HTTP response of GET / on `host:port`.

    busybox's nc, since the static busybox's wget crashes in a root without libraries.
    """
    host, port = target.rsplit(":", 1)
    return f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"


def _probe_script(targets: list[str]) -> str:
    """A shell script that tries an HTTP GET on every `host:port` at once and prints
    `host:port open|closed` for each."""
    tries = " ".join(
        f"({_http_get(t)} 2>/dev/null | grep -q '^HTTP/' && echo '{t} open' || echo '{t} closed') &"
        for t in targets
    )
    return f"{tries} wait"


def _probe_results(stdout: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in stdout.strip().splitlines())


def _host_address() -> str:
    """An address of the host on an interface of its own (not a slot's, not a test's)."""
    links = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True).stdout)
    for link in links:
        if link["ifname"] == "lo" or link["ifname"].startswith(("hth", "htest")):
            continue
        for addr in link.get("addr_info", []):
            return addr["local"]
    pytest.skip("the host has no IPv4 address besides loopback")


@pytest.mark.parametrize("template", ["busybox", "debian"])
async def test_create_runs_envd_and_the_sdk_runs_commands_as_user(
    node, sdk_env, template: str
) -> None:
    s = spec(template, env_vars={"GREETING": "hi"})
    address = await node.create(s)
    try:
        assert address.host.startswith("10.200.")
        assert address.port(49983) == 49983
        assert node.address(s.sandbox_id) == address
        assert await _health(address) == 204
        assert s.sandbox_id in await node.running()

        sandbox = await _sdk(sdk_env, address)
        result = await sandbox.commands.run(
            'id -un; echo "$HOME"; pwd; echo "$E2B_SANDBOX $E2B_SANDBOX_ID $GREETING"'
        )
        user, home, cwd, env = result.stdout.splitlines()
        assert (user, home, cwd) == ("user", "/home/user", "/home/user")
        assert env == f"true {s.sandbox_id} hi"
        result = await sandbox.commands.run("id -u; touch /root/mine", user="root")
        assert result.stdout.strip() == "0"

        # What the user wrote lands in the sandbox's own layer, owned by its own ids.
        await sandbox.files.write("/home/user/note.txt", "written by user")
        record = json.loads(
            (node.data_dir / "sandboxes" / s.sandbox_id / "record.json").read_text()
        )
        base = 2**30 + record["id_block"] * 65536
        upper = upper_layer(node.data_dir, s.sandbox_id)
        assert (upper / "home/user/note.txt").stat().st_uid == base + 1000
        assert (upper / "root/mine").stat().st_uid == base
    finally:
        assert await node.kill(s.sandbox_id)
    assert node.address(s.sandbox_id) is None
    assert not await node.kill(s.sandbox_id)
    assert wait_no_leaks(node.data_dir) == {}


async def test_limits_and_confinement_apply(node, sdk_env) -> None:
    s = spec("debian", memory_mb=128, cpu_count=1)
    address = await node.create(s)
    try:
        cgroup = Path(f"/sys/fs/cgroup/memory/hearth/{s.sandbox_id}")
        assert int((cgroup / "memory.limit_in_bytes").read_text()) == 128 * 2**20
        cpu = Path(f"/sys/fs/cgroup/cpu/hearth/{s.sandbox_id}")
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == 100_000
        pids = Path(f"/sys/fs/cgroup/pids/hearth/{s.sandbox_id}/pids.max")
        assert pids.read_text().strip() == "4096"

        sandbox = await _sdk(sdk_env, address)
        # Touch 400 MiB: the kernel kills the process at the cgroup's 128 MiB.
        result = await _run(sandbox, "python3 -c \"b = b'x' * (400 << 20); print('survived')\"")
        assert result.exit_code != 0 and "survived" not in result.stdout
        oom = dict(
            line.split() for line in (cgroup / "memory.oom_control").read_text().splitlines()
        )
        assert int(oom["oom_kill"]) >= 1
        assert await _health(address) == 204  # envd itself lives on

        status = (
            await sandbox.commands.run("grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/1/status")
        ).stdout
        fields = dict(line.split(":\t") for line in status.splitlines())
        assert fields["Seccomp"] == "2" and fields["NoNewPrivs"] == "0"
        assert int(fields["CapEff"], 16) & (1 << 21) == 0  # no CAP_SYS_ADMIN
        uid_map = (await sandbox.commands.run("cat /proc/self/uid_map")).stdout.split()
        assert uid_map[0] == "0" and int(uid_map[1]) >= 2**30 and uid_map[2] == "65536"
        denied = await _run(sandbox, "unshare -U true", user="root")
        assert denied.exit_code != 0
        # The template's passwordless sudo works for `user` (E2B users rely on it).
        assert (await sandbox.commands.run("sudo -n id -u")).stdout.strip() == "0"
    finally:
        await node.kill(s.sandbox_id)


async def test_egress_is_allowed_or_denied_per_sandbox(node, sdk_env, internet) -> None:
    online, offline = spec(), spec(egress=OFFLINE)
    addresses = await asyncio.gather(node.create(online), node.create(offline))
    try:
        for address, allowed in zip(addresses, (True, False), strict=True):
            sandbox = await _sdk(sdk_env, address)
            result = await _run(sandbox, _http_get(internet.server))
            if allowed:
                assert result.stdout.startswith("HTTP/1.0 200")
                assert result.stdout.endswith(internet.body)
            else:
                assert result.exit_code != 0 and result.stdout == ""
            # Either way the host reaches the sandbox.
            assert await _health(address) == 204
    finally:
        await asyncio.gather(node.kill(online.sandbox_id), node.kill(offline.sandbox_id))


async def test_a_sandbox_reaches_neither_the_host_nor_other_sandboxes(
    node, sdk_env, internet
) -> None:
    loopback, anywhere = HostServer("127.0.0.1"), HostServer("0.0.0.0")
    a, b = spec(), spec()
    address_a, address_b = await asyncio.gather(node.create(a), node.create(b))
    try:
        slot = node.sandbox(a.sandbox_id).slot
        host_ip = _host_address()
        targets = {
            "internet (control)": internet.server,
            "host, its side of the veth": f"{slot.gateway}:{anywhere.port}",
            "host, its own address": f"{host_ip}:{anywhere.port}",
            "host loopback service": f"127.0.0.1:{loopback.port}",
            "another sandbox's envd": f"{address_b.host}:49983",
            "link-local metadata": internet.metadata,
        }
        # The host itself reaches both services (the probes are not vacuous).
        async with httpx.AsyncClient(timeout=3) as client:
            for url in (f"http://127.0.0.1:{loopback.port}/", f"http://{host_ip}:{anywhere.port}/"):
                assert (await client.get(url)).status_code == 200

        sandbox = await _sdk(sdk_env, address_a)
        result = await sandbox.commands.run(_probe_script(list(targets.values())), timeout=60)
        seen = _probe_results(result.stdout)
        expected = {t: "closed" for t in targets.values()}
        expected[internet.server] = "open"
        assert seen == expected, {k: seen.get(v) for k, v in targets.items()}
        assert await _health(address_b) == 204
    finally:
        loopback.close()
        anywhere.close()
        await asyncio.gather(node.kill(a.sandbox_id), node.kill(b.sandbox_id))


async def test_twenty_sandboxes_start_at_once_and_leave_nothing(node) -> None:
    specs = [spec() for _ in range(20)]
    results = await asyncio.gather(*(node.create(s) for s in specs), return_exceptions=True)
    try:
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, failures[:3]
        assert len({a.host for a in results}) == 20
        assert set(await asyncio.gather(*(_health(a) for a in results))) == {204}
    finally:
        await asyncio.gather(*(node.kill(s.sandbox_id) for s in specs))
    assert wait_no_leaks(node.data_dir) == {}


async def test_a_failed_create_leaves_nothing(node) -> None:
    from hearth.node.runtime.container import ContainerError

    # envd cannot start in 4 MiB: the container ends before /health answers.
    s = spec(memory_mb=4)
    with pytest.raises(ContainerError, match="exited"):
        await node.create(s)
    assert node.address(s.sandbox_id) is None
    assert wait_no_leaks(node.data_dir) == {}


async def test_a_cancelled_create_leaves_nothing(node) -> None:
    cancelled = 0
    for delay in (0.02, 0.1, 0.2):
        s = spec()
        task = asyncio.create_task(node.create(s))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled += 1
            assert node.address(s.sandbox_id) is None
        else:  # the create won the race: only the sandbox itself is left to remove
            assert await node.kill(s.sandbox_id) is True
        assert wait_no_leaks(node.data_dir) == {}
    assert cancelled, "no create was cancelled mid-flight"


async def test_a_restarted_node_adopts_running_sandboxes_and_removes_dead_ones(
    sdk_env,
) -> None:
    from hearth.node.local import LocalNode

    # Not under pytest's tmp_path: its parents are private to root (see
    # ContainerRuntime.setup).
    data_dir = Path(tempfile.mkdtemp(prefix="hearth-node-reconcile-"))
    first = LocalNode(data_dir)
    await first.start()
    survivor, victim = spec(), spec()
    address = await first.create(survivor)
    await first.create(victim)
    monitors = [
        json.loads((data_dir / "sandboxes" / s.sandbox_id / "record.json").read_text())[
            "monitor_pid"
        ]
        for s in (survivor, victim)
    ]
    sandbox = await _sdk(sdk_env, address)
    await sandbox.files.write("/home/user/state.txt", "kept")
    # The first node "crashes": it is dropped without close(), and one sandbox dies
    # while no node watches.
    os.kill(first.sandbox(victim.sandbox_id).init_pid, signal.SIGKILL)
    del first

    second = LocalNode(data_dir)
    try:
        removed = await second.start()
        assert f"sandbox {victim.sandbox_id}" in removed
        assert await second.running() == [survivor.sandbox_id]
        assert second.address(survivor.sandbox_id) == address
        assert await _health(address) == 204
        sandbox = await _sdk(sdk_env, address)
        assert (await sandbox.files.read("/home/user/state.txt")) == "kept"
        assert not (data_dir / "sandboxes" / victim.sandbox_id).exists()
    finally:
        await second.close()
    # The first node's runtime processes were this process's children: reap them.
    reap(monitors)
    assert wait_no_leaks(data_dir, closed=True) == {}
    assert leaks(data_dir, closed=True) == {}
    shutil.rmtree(data_dir)
