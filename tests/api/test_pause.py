"""Pause, resume, auto-pause and auto-resume through the released `e2b` SDK, against a
real `hearth serve` with the container runtime (spec §2.3, §7.1-7.3).

A memory pause freezes the container: a process's counter stops and goes on from the
same value after the resume. A filesystem-only pause stops it: the resume boots envd
again over the same files. Nothing of a killed paused sandbox is left on the host.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from e2b import AsyncSandbox, Sandbox, SandboxNotFoundException, SandboxQuery, SandboxState
from node.conftest import leaks

from .conftest import Hearth, serve_containers

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: containers and network slots"),
]

# A Python process whose counter lives in its memory (the file only shows it).
COUNTER_PY = """
import os, time
i = 0
while True:
    i += 1
    with open("/tmp/count.new", "w") as f:
        f.write(str(i))
    os.replace("/tmp/count.new", "/tmp/count")
    time.sleep(0.05)
"""
COUNTER = f"nohup python3 -c '{COUNTER_PY}' >/dev/null 2>&1 &"


def _wait_for(condition, timeout: float = 60.0, interval: float = 0.1) -> None:
    """Poll `condition` until true; the timeout only bounds a hang, it measures nothing."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def _count(sandbox: Sandbox) -> int:
    return int(sandbox.commands.run("cat /tmp/count 2>/dev/null; true").stdout.strip() or 0)


def _counting(sandbox: Sandbox) -> int:
    """Start the counter and return a value it reached."""
    sandbox.commands.run(COUNTER)
    _wait_for(lambda: _count(sandbox) > 0)
    return _count(sandbox)


def _moves_past(sandbox: Sandbox, value: int) -> bool:
    for _ in range(200):  # bounded: until the counter moves on; no timing asserted
        if _count(sandbox) > value:
            return True
        time.sleep(0.05)
    return False


def _envd_start(sandbox: Sandbox) -> str:
    """When envd (PID 1) started, in clock ticks: it changes only with a cold boot."""
    return sandbox.commands.run("cut -d' ' -f22 /proc/1/stat").stdout.strip()


def _leaks(node_dir: Path, *sandbox_ids: str) -> dict[str, list]:
    """What the node under `node_dir` left on the host (`leaks()`) of these sandboxes.
    Other servers on this host may run sandboxes meanwhile, so the host's shared lists
    are narrowed to ours: cgroups by id (a sandbox's processes keep its cgroups), and
    processes by the node's path (runtime monitors, launchers), not by uid (another
    node's sandboxes may use the same uid block)."""
    found: dict[str, list] = {}
    for _ in range(100):  # bounded: until the kernel has finished tearing down
        found = leaks(node_dir)
        for shared in ("interfaces", "rules", "processes"):
            found.pop(shared, None)
        cgroups = [c for c in found.pop("cgroups", []) if any(i in c for i in sandbox_ids)]
        processes = _processes(node_dir)
        found.update({k: v for k, v in (("cgroups", cgroups), ("processes", processes)) if v})
        if not found:
            break
        time.sleep(0.1)
    return found


def _processes(node_dir: Path) -> list[str]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if str(node_dir).encode() in cmdline:
            found.append(f"{entry} {cmdline[:100]!r}")
    return found


def _state(sandbox_id: str) -> SandboxState:
    return Sandbox.get_info(sandbox_id).state


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Hearth, Path]]:
    import shutil
    import tempfile

    data_dir = Path(tempfile.mkdtemp(prefix="hearth-pause-", dir="/var/tmp"))
    data_dir.chmod(0o755)
    thread, info = serve_containers(data_dir)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in info.env().items():
                patch.setenv(name, value)
            patch.delenv("E2B_DEBUG", raising=False)
            yield info, data_dir
    finally:
        for listed in _all_sandboxes(info):
            httpx.delete(f"{info.api_url}/sandboxes/{listed}", headers={"X-API-Key": info.api_key})
        assert thread.stop(), "hearth serve did not stop"
        shutil.rmtree(data_dir, ignore_errors=True)


def _all_sandboxes(info: Hearth) -> list[str]:
    r = httpx.get(f"{info.api_url}/v2/sandboxes", headers={"X-API-Key": info.api_key})
    return [s["sandboxID"] for s in r.json()] if r.status_code == 200 else []


@pytest.fixture
def hearth(server: tuple[Hearth, Path]) -> Hearth:
    return server[0]


@pytest.fixture
def api(hearth: Hearth) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=hearth.api_url, headers={"X-API-Key": hearth.api_key}, timeout=120
    ) as client:
        yield client


@pytest.fixture
def node_dir(server: tuple[Hearth, Path]) -> Path:
    return server[1] / "node"


def _envd_status(hearth: Hearth, sandbox_id: str, token: str | None) -> int:
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "49983"}
    if token:
        headers["X-Access-Token"] = token
    return httpx.get(f"{hearth.sandbox_url}/envs", headers=headers, timeout=30).status_code


# --- pause and resume -------------------------------------------------------------------


def test_pause_keeps_memory_files_and_the_token(hearth: Hearth, sandbox: Sandbox) -> None:
    token = sandbox._envd_access_token
    assert token
    sandbox.files.write("/home/user/kept.txt", "kept")
    before = _counting(sandbox)

    assert sandbox.pause() is True
    info = sandbox.get_info()
    assert info.state == SandboxState.PAUSED
    paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
    assert sandbox.sandbox_id in [s.sandbox_id for s in paused]
    running = Sandbox.list(query=SandboxQuery(state=[SandboxState.RUNNING])).next_items()
    assert sandbox.sandbox_id not in [s.sandbox_id for s in running]
    # Paused: the proxy does not serve it (no autoResume).
    assert _envd_status(hearth, sandbox.sandbox_id, token) == 502
    assert sandbox.pause() is False  # 409: already paused
    assert sandbox.beta_pause() is False  # the deprecated name of the same call

    again = Sandbox.connect(sandbox.sandbox_id)
    assert again.sandbox_id == sandbox.sandbox_id
    assert again.get_info().state == SandboxState.RUNNING
    assert again._envd_access_token == token
    # The same process goes on: its counter continues from where it was frozen.
    frozen_at = _count(again)
    assert frozen_at >= before
    assert _moves_past(again, frozen_at)
    assert again.files.read("/home/user/kept.txt") == "kept"
    assert _envd_status(hearth, sandbox.sandbox_id, token) == 200
    assert _envd_status(hearth, sandbox.sandbox_id, None) == 401


def test_connect_and_resume_answer_as_e2b(api: httpx.Client, sandbox: Sandbox) -> None:
    sid = sandbox.sandbox_id
    token = sandbox._envd_access_token
    assert api.post(f"/sandboxes/{sid}/connect", json={"timeout": 60}).status_code == 200
    assert api.post(f"/sandboxes/{sid}/resume", json={"timeout": 60}).status_code == 409

    assert api.post(f"/sandboxes/{sid}/pause").status_code == 204
    detail = api.get(f"/sandboxes/{sid}").json()
    assert (detail["state"], detail["pauseMode"]) == ("paused", "full")
    assert api.post(f"/sandboxes/{sid}/pause").status_code == 409
    r = api.post(f"/sandboxes/{sid}/connect", json={"timeout": 60})
    assert r.status_code == 201
    assert (r.json()["sandboxID"], r.json()["envdAccessToken"]) == (sid, token)
    assert "pauseMode" not in api.get(f"/sandboxes/{sid}").json()

    assert api.post(f"/sandboxes/{sid}/pause", json={}).status_code == 204
    r = api.post(f"/v2/sandboxes/{sid}/connect", json={"timeout": 60})
    assert r.status_code == 201 and r.json()["envdAccessToken"] == token
    assert api.post(f"/v2/sandboxes/{sid}/connect").status_code == 200

    assert api.post(f"/sandboxes/{sid}/pause").status_code == 204
    r = api.post(f"/sandboxes/{sid}/resume", json={"timeout": 60})
    assert r.status_code == 201 and r.json()["envdAccessToken"] == token
    assert sandbox.commands.run("echo back").stdout.strip() == "back"

    missing = "a" * 20
    for path in ("pause", "resume", "connect"):
        assert api.post(f"/sandboxes/{missing}/{path}", json={"timeout": 5}).status_code == 404


def test_resume_applies_the_timeout_again(api: httpx.Client, sandbox: Sandbox) -> None:
    sid = sandbox.sandbox_id
    created_end = sandbox.get_info().end_at  # created with 300 s
    sandbox.pause()
    before = datetime.now(UTC)
    Sandbox.connect(sid, timeout=30)
    end = sandbox.get_info().end_at
    # The resume set the end from its own timeout (30 s from the resume), not the old one.
    assert before < end <= datetime.now(UTC) + timedelta(seconds=30)
    assert end < created_end
    # A later connect with a shorter timeout never shortens a running sandbox's end.
    Sandbox.connect(sid, timeout=5)
    assert sandbox.get_info().end_at == end


def test_kill_of_a_paused_sandbox_leaves_nothing(hearth: Hearth, node_dir: Path) -> None:
    frozen = Sandbox.create("base", timeout=300)
    stopped = Sandbox.create("base", timeout=300)
    frozen.pause()
    stopped.pause(mode="filesystem")
    assert Sandbox.kill(frozen.sandbox_id) is True
    assert stopped.kill() is True
    assert Sandbox.kill(frozen.sandbox_id) is False
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(frozen.sandbox_id)
    listed = Sandbox.list().next_items()
    assert not {frozen.sandbox_id, stopped.sandbox_id} & {s.sandbox_id for s in listed}
    if not _all_sandboxes(hearth):
        assert _leaks(node_dir, frozen.sandbox_id, stopped.sandbox_id) == {}
    for s in (frozen, stopped):
        assert not (node_dir / "sandboxes" / s.sandbox_id).exists()
        assert not list(Path("/sys/fs/cgroup").glob(f"*/hearth/{s.sandbox_id}"))


def test_filesystem_pause_cold_boots_with_the_files(api: httpx.Client, sandbox: Sandbox) -> None:
    sandbox.files.write("/home/user/kept.txt", "kept")
    booted = _envd_start(sandbox)
    _counting(sandbox)
    assert sandbox.pause(mode="filesystem") is True
    assert api.get(f"/sandboxes/{sandbox.sandbox_id}").json()["pauseMode"] == "filesystem"

    again = Sandbox.connect(sandbox.sandbox_id)
    assert _envd_start(again) != booted
    assert again.files.read("/home/user/kept.txt") == "kept"
    stopped_at = _count(again)
    time.sleep(0.3)
    assert _count(again) == stopped_at  # the counter did not survive the cold boot


def test_connect_with_reboot_drops_the_memory(sandbox: Sandbox) -> None:
    sandbox.files.write("/home/user/kept.txt", "kept")
    booted = _envd_start(sandbox)
    assert sandbox.pause() is True
    again = Sandbox.connect(sandbox.sandbox_id, on_resume="reboot")
    assert _envd_start(again) != booted
    assert again.files.read("/home/user/kept.txt") == "kept"


def test_auto_pause_at_the_timeout_then_connect(api: httpx.Client) -> None:
    sandbox = Sandbox.create("base", timeout=2, lifecycle={"on_timeout": "pause"})
    try:
        assert sandbox.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": False}
        sandbox.files.write("/home/user/kept.txt", "kept")
        _wait_for(lambda: _state(sandbox.sandbox_id) == SandboxState.PAUSED)
        # Paused sandboxes do not expire: it stays paused past its end.
        time.sleep(2)
        assert _state(sandbox.sandbox_id) == SandboxState.PAUSED
        again = Sandbox.connect(sandbox.sandbox_id, timeout=300)
        assert again.files.read("/home/user/kept.txt") == "kept"
        assert _state(sandbox.sandbox_id) == SandboxState.RUNNING
    finally:
        sandbox.kill()


def test_auto_pause_without_memory(api: httpx.Client) -> None:
    sandbox = Sandbox.create(
        "base", timeout=2, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}}
    )
    try:
        sandbox.files.write("/home/user/kept.txt", "kept")
        _wait_for(lambda: _state(sandbox.sandbox_id) == SandboxState.PAUSED)
        detail = api.get(f"/sandboxes/{sandbox.sandbox_id}").json()
        assert detail["pauseMode"] == "filesystem"
        again = Sandbox.connect(sandbox.sandbox_id, timeout=300)
        assert again.files.read("/home/user/kept.txt") == "kept"
    finally:
        sandbox.kill()


def test_auto_pause_memory_rules(api: httpx.Client) -> None:
    for body in (
        {"templateID": "base", "autoPauseMemory": False},
        {"templateID": "base", "autoPause": False, "autoPauseMemory": True},
        {
            "templateID": "base",
            "autoPause": True,
            "autoPauseMemory": False,
            "autoResume": {"enabled": True},
        },
    ):
        assert api.post("/v2/sandboxes", json=body).status_code == 400, body


def test_auto_resume_through_the_proxy(hearth: Hearth) -> None:
    sandbox = Sandbox.create(
        "base", timeout=300, lifecycle={"on_timeout": "pause", "auto_resume": True}
    )
    try:
        token = sandbox._envd_access_token
        before = _counting(sandbox)
        sandbox.pause()
        assert _state(sandbox.sandbox_id) == SandboxState.PAUSED
        # Concurrent requests through the proxy: all served, the sandbox resumed once.
        statuses: list[int] = []

        def hit() -> None:
            statuses.append(_envd_status(hearth, sandbox.sandbox_id, token))

        threads = [threading.Thread(target=hit) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 4
        assert _state(sandbox.sandbox_id) == SandboxState.RUNNING
        assert _moves_past(sandbox, before)
        # And through the SDK's own traffic (an envd exec) after another pause.
        sandbox.pause()
        assert sandbox.commands.run("echo awake").stdout.strip() == "awake"
        assert _state(sandbox.sandbox_id) == SandboxState.RUNNING
    finally:
        sandbox.kill()


def test_without_auto_resume_the_proxy_does_not_serve(hearth: Hearth, sandbox: Sandbox) -> None:
    token = sandbox._envd_access_token
    sandbox.pause()
    assert _envd_status(hearth, sandbox.sandbox_id, token) == 502
    assert not sandbox.is_running()
    assert _state(sandbox.sandbox_id) == SandboxState.PAUSED


def test_a_filesystem_pause_is_not_auto_resumed(hearth: Hearth) -> None:
    sandbox = Sandbox.create(
        "base", timeout=300, lifecycle={"on_timeout": "pause", "auto_resume": True}
    )
    try:
        sandbox.pause(mode="filesystem")
        token = sandbox._envd_access_token
        assert _envd_status(hearth, sandbox.sandbox_id, token) == 502
        assert _state(sandbox.sandbox_id) == SandboxState.PAUSED
    finally:
        sandbox.kill()


# --- concurrency ------------------------------------------------------------------------


def _together(calls: int, call) -> list:
    results: list = [None] * calls
    barrier = threading.Barrier(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except Exception as e:  # noqa: BLE001 - reported by the assert below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_pauses_and_connects(api: httpx.Client, sandbox: Sandbox) -> None:
    sid = sandbox.sandbox_id
    headers = dict(api.headers)
    url = str(api.base_url)

    def pause() -> int:
        return httpx.post(f"{url}/sandboxes/{sid}/pause", headers=headers, timeout=120).status_code

    codes = _together(4, pause)
    assert set(codes) <= {204, 409} and 204 in codes, codes
    assert _state(sid) == SandboxState.PAUSED

    def connect() -> tuple[int, int]:
        r = httpx.post(
            f"{url}/sandboxes/{sid}/connect", json={"timeout": 60}, headers=headers, timeout=120
        )
        # None returns before the sandbox is usable: envd answers at once.
        return r.status_code, _envd_status_url(url, sid, r.json()["envdAccessToken"])

    results = _together(4, connect)
    assert sorted(code for code, _ in results) == [200, 200, 200, 201], results
    assert {status for _, status in results} == {200}

    sandbox.pause()

    def resume() -> int:
        return httpx.post(
            f"{url}/sandboxes/{sid}/resume", json={"timeout": 60}, headers=headers, timeout=120
        ).status_code

    codes = _together(4, resume)
    assert set(codes) <= {201, 409} and 201 in codes, codes
    assert sandbox.commands.run("echo ok").stdout.strip() == "ok"


def _envd_status_url(url: str, sandbox_id: str, token: str) -> int:
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "49983", "X-Access-Token": token}
    return httpx.get(f"{url}/envs", headers=headers, timeout=30).status_code


# --- teams, async -----------------------------------------------------------------------


def test_another_teams_sandbox_is_not_found(hearth: Hearth, sandbox: Sandbox) -> None:
    from hearth import store

    async def make_key() -> str:
        async with await store.open(hearth.database_url) as opened:
            team = await opened.create_team(f"other-{uuid.uuid4().hex[:8]}")
            key, _ = await opened.create_api_key(team.id, "tests")
            return key

    other = asyncio.run(make_key())
    with pytest.raises(SandboxNotFoundException):
        Sandbox.pause(sandbox.sandbox_id, api_key=other)
    sandbox.pause()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sandbox.sandbox_id, api_key=other)
    assert Sandbox.kill(sandbox.sandbox_id, api_key=other) is False
    headers = {"X-API-Key": other}
    r = httpx.post(f"{hearth.api_url}/sandboxes/{sandbox.sandbox_id}/resume", headers=headers)
    assert r.status_code == 404
    assert _state(sandbox.sandbox_id) == SandboxState.PAUSED


async def test_async_pause_and_connect(hearth: Hearth) -> None:
    sandbox = await AsyncSandbox.create("base", timeout=300)
    try:
        await sandbox.files.write("/home/user/kept.txt", "kept")
        assert await sandbox.pause() is True
        assert (await sandbox.get_info()).state == SandboxState.PAUSED
        assert await sandbox.pause() is False
        again = await AsyncSandbox.connect(sandbox.sandbox_id)
        assert await again.files.read("/home/user/kept.txt") == "kept"
        assert (await again.get_info()).state == SandboxState.RUNNING
    finally:
        await sandbox.kill()


# --- restart ----------------------------------------------------------------------------


def test_a_paused_sandbox_survives_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import tempfile

    data_dir = Path(tempfile.mkdtemp(prefix="hearth-pause-restart-", dir="/var/tmp"))
    data_dir.chmod(0o755)
    thread, info = serve_containers(data_dir)
    for name, value in info.env().items():
        monkeypatch.setenv(name, value)
    try:
        sandbox = Sandbox.create("base", timeout=300)
        token = sandbox._envd_access_token
        before = _counting(sandbox)
        sandbox.pause()
    finally:
        assert thread.stop(), "hearth serve did not stop"

    thread, _ = serve_containers(data_dir, info.port)
    try:
        assert _state(sandbox.sandbox_id) == SandboxState.PAUSED
        again = Sandbox.connect(sandbox.sandbox_id)
        assert again._envd_access_token == token
        frozen_at = _count(again)
        assert frozen_at >= before
        assert _moves_past(again, frozen_at), "the frozen process did not survive"
        assert again.kill() is True
    finally:
        assert thread.stop(), "hearth serve did not stop"
    assert _leaks(data_dir / "node", sandbox.sandbox_id) == {}
    shutil.rmtree(data_dir, ignore_errors=True)
