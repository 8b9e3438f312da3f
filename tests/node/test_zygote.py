"""Container sandboxes whose envd the node's zygote forks in (HEARTH_ENVD_ZYGOTE=1),
driven through the real E2B SDK; what dies (envd, the zygote, the node) leaves nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import ROOT_ONLY, leaks, reap, spec

pytestmark = ROOT_ONLY


@pytest.fixture(scope="module")
def zygote_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are private to root (ContainerRuntime.setup).
    path = Path(tempfile.mkdtemp(prefix="hearth-node-zygote-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def zygote_on() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEARTH_ENVD_ZYGOTE", "1")
        yield


def _key(kind: str, item: object) -> str:
    # A process by its pid: its state letter changes while it runs.
    return str(item).split()[0] if kind == "processes" else json.dumps(item, sort_keys=True)


@pytest.fixture(scope="module")
def baseline(zygote_dir: Path) -> dict[str, set[str]]:
    """What the host held of sandboxes before these tests (another user's, sharing
    the host): the leak checks look for anything beyond it."""
    return {k: {_key(k, i) for i in v} for k, v in leaks(zygote_dir).items()}


def no_leaks(data_dir: Path, baseline: dict[str, set[str]], *, closed: bool = False) -> dict:
    """leaks() beyond `baseline`, given a moment for what the kernel still tears down."""
    deadline = time.monotonic() + 10
    while True:
        found = {
            k: [i for i in v if _key(k, i) not in baseline.get(k, set())]
            for k, v in leaks(data_dir, closed=closed).items()
        }
        found = {k: v for k, v in found.items() if v}
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture(scope="module")
async def znode(zygote_dir: Path, zygote_on: None, baseline) -> AsyncIterator:
    from hearth.node.local import LocalNode

    async with LocalNode(zygote_dir) as n:
        yield n
        zygote = _runtime(n).zygote
        last = zygote.pid if zygote is not None else None
    assert no_leaks(zygote_dir, baseline, closed=True) == {}
    # The node's close stops its zygote and removes its socket.
    assert last is not None and not _alive(last)
    assert not (zygote_dir / "envd-zygote.sock").exists()


def _runtime(node):
    return node.runtime.runtime


def _record(node, sandbox_id: str) -> dict:
    return json.loads((node.data_dir / "sandboxes" / sandbox_id / "record.json").read_text())


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError(f"no Pss in /proc/{pid}/smaps_rollup")


def _alive(pid: int) -> bool:
    try:
        return "Z" not in _status(pid)["State"]
    except OSError:
        return False


async def _health(address) -> int | None:
    try:
        async with httpx.AsyncClient(timeout=3) as client:
            r = await client.get(f"http://{address.host}:{address.port(49983)}/health")
            return r.status_code
    except httpx.HTTPError:
        return None


async def _sdk(sdk_env, address):
    from e2b import AsyncSandbox

    sdk_env(address)
    return await AsyncSandbox.create()


async def _answers(sdk_env, address, text: str) -> None:
    """The sandbox runs a command and keeps a file, through the SDK."""
    sandbox = await _sdk(sdk_env, address)
    await sandbox.files.write("/home/user/note.txt", text)
    assert await sandbox.files.read("/home/user/note.txt") == text
    result = await sandbox.commands.run("cat /home/user/note.txt; echo; id -un")
    assert result.stdout.splitlines() == [text, "user"]


@pytest.mark.parametrize("template", ["busybox", "debian"])
async def test_envd_is_zygote_born_confined_and_serves_the_sdk(
    znode, sdk_env, baseline, template: str
) -> None:
    s = spec(template)
    address = await znode.create(s)
    try:
        record = _record(znode, s.sandbox_id)
        init, envd = znode.sandbox(s.sandbox_id).init_pid, record["envd_pid"]
        assert record["envd_zygote"] is True
        # envd is the child of the container's minimal init, forked from the zygote
        # (its command line is the zygote's), and the init is pid1.py, not envd.
        assert _status(envd)["PPid"] == str(init)
        zygote = _runtime(znode).zygote.pid
        assert (
            Path(f"/proc/{envd}/cmdline").read_bytes()
            == Path(f"/proc/{zygote}/cmdline").read_bytes()
        )
        assert b"pid1.py" in Path(f"/proc/{init}/cmdline").read_bytes()
        assert _status(envd)["NSpid"].split()[-1] != "1"
        # In the container's namespaces and cgroups.
        for ns in ("mnt", "pid", "net", "user", "uts", "ipc", "cgroup"):
            assert os.readlink(f"/proc/{envd}/ns/{ns}") == os.readlink(f"/proc/{init}/ns/{ns}")
        assert Path(f"/proc/{envd}/cgroup").read_text() == Path(f"/proc/{init}/cgroup").read_text()

        await _answers(sdk_env, address, f"zygote-born in {template}")
        sandbox = await _sdk(sdk_env, address)
        # What the OCI runtime gives a container's process, envd has too.
        out = await sandbox.commands.run(
            "grep -E '^(Seccomp|CapEff|Uid|NoNewPrivs):' /proc/$PPID/status",
            user="root",
        )
        fields = dict(line.split(":\t", 1) for line in out.stdout.splitlines())
        assert fields["Seccomp"] == "2" and fields["NoNewPrivs"] == "0"
        assert int(fields["CapEff"], 16) & (1 << 21) == 0  # no CAP_SYS_ADMIN
        assert fields["Uid"].split()[0] == "0"
        denied = await sandbox.commands.run("unshare -U true || echo denied", user="root")
        assert "denied" in denied.stdout
        # envd reaps the orphans of its processes (they come to it, not to the init,
        # which would otherwise take an orphan's end for envd's).
        await sandbox.commands.run("sh -c 'sleep 0.2 &' ; sleep 1")
        zombies = await sandbox.commands.run(
            "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l"
        )
        assert zombies.stdout.strip() == "0"
        assert _alive(init) and _alive(envd)

        print(
            f"\n{template}: idle zygote-born envd PSS {_pss_kib(envd) / 1024:.1f} MiB,"
            f" its init PSS {_pss_kib(init) / 1024:.1f} MiB"
        )
    finally:
        assert await znode.kill(s.sandbox_id)
    assert no_leaks(znode.data_dir, baseline) == {}


async def test_a_dead_envd_stops_its_sandbox_and_leaves_nothing(znode, sdk_env, baseline) -> None:
    s, other = spec(), spec()
    address, other_address = await asyncio.gather(znode.create(s), znode.create(other))
    try:
        envd = _record(znode, s.sandbox_id)["envd_pid"]
        os.kill(envd, signal.SIGKILL)
        # The init ends the container, the node releases the rest: nothing of it stays.
        sandbox_dir = znode.data_dir / "sandboxes" / s.sandbox_id
        for _ in range(200):
            if not sandbox_dir.exists():
                break
            await asyncio.sleep(0.05)
        assert not sandbox_dir.exists()
        assert await _health(address) is None
        await _answers(sdk_env, other_address, "the other one lives")
    finally:
        await asyncio.gather(znode.kill(s.sandbox_id), znode.kill(other.sandbox_id))
    assert no_leaks(znode.data_dir, baseline) == {}


async def test_a_killed_zygote_is_replaced_and_running_sandboxes_go_on(
    znode, sdk_env, baseline
) -> None:
    running = spec()
    address = await znode.create(running)
    try:
        zygote = _runtime(znode).zygote
        first = zygote.pid
        os.kill(first, signal.SIGKILL)
        await _answers(sdk_env, address, "outlived its zygote")
        later = spec()
        later_address = await znode.create(later)
        try:
            assert zygote.pid not in (None, first)
            await _answers(sdk_env, later_address, "from the new zygote")
        finally:
            await znode.kill(later.sandbox_id)
        await _answers(sdk_env, address, "still here")
    finally:
        await znode.kill(running.sandbox_id)
    assert no_leaks(znode.data_dir, baseline) == {}


async def test_a_zygote_killed_mid_fork_leaves_nothing(znode, sdk_env, baseline) -> None:
    """Creates in flight when the zygote dies while one of its children is joining a
    container: each create answers or fails, and nothing is left either way."""
    zygote = _runtime(znode).zygote
    assert zygote.pid is not None  # started by the tests before
    target = zygote.pid
    seen = threading.Event()
    stop = threading.Event()

    def kill_at_first_child() -> None:
        children = Path(f"/proc/{target}/task/{target}/children")
        while not stop.is_set():
            with contextlib.suppress(OSError):
                if children.read_text().split():
                    os.kill(target, signal.SIGKILL)
                    seen.set()
                    return

    killer = threading.Thread(target=kill_at_first_child)
    killer.start()
    specs = [spec() for _ in range(4)]
    try:
        results = await asyncio.gather(*(znode.create(s) for s in specs), return_exceptions=True)
    finally:
        stop.set()
        killer.join()
    try:
        assert seen.is_set(), "the zygote was never seen with a child"
        assert not _alive(target)
        started = [
            (s, r) for s, r in zip(specs, results, strict=True) if not isinstance(r, BaseException)
        ]
        failed = [r for r in results if isinstance(r, BaseException)]
        print(
            f"\nzygote killed mid-fork: {len(started)} creates answered,"
            f" {len(failed)} failed: {failed}"
        )
        for _, address in started:
            await _answers(sdk_env, address, "born around a dying zygote")
        for s, r in zip(specs, results, strict=True):
            if isinstance(r, BaseException):
                assert znode.address(s.sandbox_id) is None
                assert not (znode.data_dir / "sandboxes" / s.sandbox_id).exists()
        again = spec()
        await znode.create(again)
        specs.append(again)
    finally:
        await asyncio.gather(*(znode.kill(s.sandbox_id) for s in specs))
    assert no_leaks(znode.data_dir, baseline) == {}


async def test_a_restarted_node_adopts_zygote_born_sandboxes(
    sdk_env, zygote_on: None, baseline
) -> None:
    from hearth.node.local import LocalNode

    data_dir = Path(tempfile.mkdtemp(prefix="hearth-node-zygote-adopt-"))
    first = LocalNode(data_dir)
    await first.start()
    survivor, victim = spec(), spec()
    address = await first.create(survivor)
    await first.create(victim)
    monitors = [_record(first, s.sandbox_id)["monitor_pid"] for s in (survivor, victim)]
    old_zygote = _runtime(first).zygote.pid
    await _answers(sdk_env, address, "before the restart")
    # The node stops with its sandboxes running (its zygote goes with it); one
    # sandbox's envd dies while no node watches.
    await first.detach()
    assert not _alive(old_zygote)
    os.kill(_record(first, victim.sandbox_id)["envd_pid"], signal.SIGKILL)

    second = LocalNode(data_dir)
    try:
        removed = await second.start()
        assert f"sandbox {victim.sandbox_id}" in removed
        assert await second.running() == [survivor.sandbox_id]
        assert await _health(address) == 204
        await _answers(sdk_env, address, "after the restart")
        # The adopted envd is watched again: its death stops the sandbox.
        os.kill(_record(second, survivor.sandbox_id)["envd_pid"], signal.SIGKILL)
        sandbox_dir = data_dir / "sandboxes" / survivor.sandbox_id
        for _ in range(200):
            if not sandbox_dir.exists():
                break
            await asyncio.sleep(0.05)
        assert not sandbox_dir.exists()
    finally:
        await second.close()
    reap(monitors)
    assert no_leaks(data_dir, baseline, closed=True) == {}
    shutil.rmtree(data_dir)
