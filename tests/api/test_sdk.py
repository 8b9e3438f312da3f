"""The released `e2b` SDK (sync and async) against a real `hearth serve`, recipe A.

Every sandbox here is real (envd in its own namespaces) and reached through the gateway
by the routing headers, exactly as the SDK does with E2B_SANDBOX_URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    Sandbox,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
)

from .conftest import Hearth

pytestmark = pytest.mark.root


def _wait_for(condition, timeout: float = 30.0, interval: float = 0.1) -> None:
    """Poll `condition` until true; the timeout only bounds a hang, it measures nothing."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def tag() -> str:
    """Metadata unique to one test, so lists see only that test's sandboxes."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def sandbox(hearth: Hearth) -> Iterator[Sandbox]:
    sbx = Sandbox.create(timeout=120)
    try:
        yield sbx
    finally:
        sbx.kill()


# --- create, info, commands, files -----------------------------------------------------


def test_create_with_metadata_env_and_timeout(hearth: Hearth, tag: str) -> None:
    before = datetime.now(UTC)
    metadata = {"tag": tag, "with space": "a b&c=d"}
    sbx = Sandbox.create(metadata=metadata, envs={"FOO": "bar baz"}, timeout=90)
    try:
        assert len(sbx.sandbox_id) == 20 and sbx.sandbox_id.isalnum()
        assert sbx.sandbox_id == sbx.sandbox_id.lower()
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.template_id == "base"
        assert info.metadata == metadata
        assert info.state == SandboxState.RUNNING
        assert info.envd_version == "0.6.13"
        assert info.started_at >= before - timedelta(seconds=5)
        assert info.end_at - info.started_at == timedelta(seconds=90)
        assert sbx.commands.run("echo $FOO").stdout == "bar baz\n"
        assert sbx.commands.run("whoami").stdout == "user\n"
    finally:
        assert sbx.kill() is True
    assert sbx.kill() is False  # already gone: the API says 404


def test_commands_and_files(sandbox: Sandbox) -> None:
    sandbox.files.write("notes/hello.txt", "hello hearth")
    assert sandbox.files.read("notes/hello.txt") == "hello hearth"
    assert sandbox.files.exists("/home/user/notes/hello.txt")
    names = [entry.name for entry in sandbox.files.list("notes")]
    assert names == ["hello.txt"]
    with pytest.raises(CommandExitException) as failure:
        sandbox.commands.run("cat notes/missing.txt")
    assert failure.value.exit_code == 1
    out: list[str] = []
    result = sandbox.commands.run("for i in 1 2 3; do echo $i; done", on_stdout=out.append)
    assert result.stdout == "1\n2\n3\n" == "".join(out)


def test_python_is_python3(sandbox: Sandbox) -> None:
    # E2B's base image is a python:3 image: `python` and `python3` are the same one.
    assert sandbox.commands.run("python -c 'print(1)'").stdout == "1\n"
    versions = sandbox.commands.run("python --version && python3 --version").stdout
    first, second = versions.splitlines()
    assert first == second and first.startswith("Python 3.")


def test_large_file_round_trip(sandbox: Sandbox) -> None:
    data = bytes(range(256)) * (40 * 1024 * 4)  # 40 MiB through the gateway both ways
    sandbox.files.write("big.bin", data)
    digest = sandbox.commands.run("sha256sum big.bin | cut -d' ' -f1").stdout.strip()
    assert digest == hashlib.sha256(data).hexdigest()
    assert sandbox.files.read("big.bin", format="bytes") == data


async def test_async_sdk(hearth: Hearth, tag: str) -> None:
    sbx = await AsyncSandbox.create(metadata={"tag": tag}, envs={"A": "1"}, timeout=60)
    try:
        result = await sbx.commands.run("echo $A; echo err >&2")
        assert (result.stdout, result.stderr) == ("1\n", "err\n")
        await sbx.files.write("a.txt", "async")
        assert await sbx.files.read("a.txt") == "async"
        assert await sbx.is_running()
        listed = await AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag})).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        again = await AsyncSandbox.connect(sbx.sandbox_id)
        assert (await again.commands.run("cat a.txt")).stdout == "async"
    finally:
        await sbx.kill()
    assert not await sbx.is_running()


async def test_concurrent_creates(hearth: Hearth, tag: str) -> None:
    sandboxes = await asyncio.gather(
        *(AsyncSandbox.create(metadata={"tag": tag, "n": str(i)}, timeout=60) for i in range(20))
    )
    try:
        assert len({s.sandbox_id for s in sandboxes}) == 20
        outputs = await asyncio.gather(*(s.commands.run("echo ok") for s in sandboxes))
        assert {o.stdout for o in outputs} == {"ok\n"}
        paginator = AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=100)
        assert len(await paginator.next_items()) == 20
    finally:
        await asyncio.gather(*(s.kill() for s in sandboxes))
    paginator = AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag}))
    assert await paginator.next_items() == []


# --- list ------------------------------------------------------------------------------


def test_list_filters_and_pagination(hearth: Hearth, tag: str) -> None:
    created = []
    try:
        for i in range(3):
            created.append(Sandbox.create(metadata={"tag": tag, "i": str(i), "sp": "x y"}))
        ids = [s.sandbox_id for s in created]

        one = Sandbox.list(query=SandboxQuery(metadata={"tag": tag, "i": "1"})).next_items()
        assert [s.sandbox_id for s in one] == [ids[1]]
        spaced = Sandbox.list(query=SandboxQuery(metadata={"tag": tag, "sp": "x y"}))
        assert {s.sandbox_id for s in spaced.next_items()} == set(ids)
        none = Sandbox.list(query=SandboxQuery(metadata={"tag": tag, "i": "9"})).next_items()
        assert none == []
        paused = Sandbox.list(
            query=SandboxQuery(metadata={"tag": tag}, state=[SandboxState.PAUSED])
        )
        assert paused.next_items() == []

        # limit 1: newest first, one per page, no token after the last.
        pages = []
        paginator = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=1)
        while paginator.has_next:
            pages.append([s.sandbox_id for s in paginator.next_items()])
        assert pages == [[ids[2]], [ids[1]], [ids[0]]]
        assert paginator.next_token is None

        created.pop(1).kill()
        left = Sandbox.list(query=SandboxQuery(metadata={"tag": tag})).next_items()
        assert [s.sandbox_id for s in left] == [ids[2], ids[0]]
    finally:
        for sbx in created:
            sbx.kill()


def test_list_headers_and_v1(hearth: Hearth, tag: str) -> None:
    sbx = Sandbox.create(metadata={"tag": tag})
    try:
        with httpx.Client(base_url=hearth.api_url, headers={"X-API-Key": hearth.api_key}) as api:
            # JS encodes the filter twice (`a%3Db%2520c`): it must decode the same.
            response = api.get(
                "/v2/sandboxes", params={"metadata": f"tag={tag}", "state": "running,paused"}
            )
            assert response.status_code == 200
            assert [s["sandboxID"] for s in response.json()] == [sbx.sandbox_id]
            assert response.headers["X-Total-Running"] == "1"
            assert "X-Next-Token" not in response.headers
            v1 = api.get("/sandboxes", params={"metadata": f"tag={tag}"})
            assert v1.status_code == 200
            (listed,) = v1.json()
            for field in ("templateID", "sandboxID", "clientID", "startedAt", "endAt"):
                assert field in listed
            assert listed["state"] == "running" and listed["cpuCount"] >= 1
    finally:
        sbx.kill()


# --- lifecycle -------------------------------------------------------------------------


def test_connect_extends_but_never_shortens(sandbox: Sandbox) -> None:
    end = sandbox.get_info().end_at
    same = Sandbox.connect(sandbox.sandbox_id, timeout=10)
    assert same.sandbox_id == sandbox.sandbox_id
    assert sandbox.get_info().end_at == end  # a shorter timeout leaves endAt alone
    later = Sandbox.connect(sandbox.sandbox_id, timeout=600)
    assert sandbox.get_info().end_at > end
    assert later.commands.run("echo connected").stdout == "connected\n"


def test_set_timeout_expires_the_sandbox(hearth: Hearth) -> None:
    sbx = Sandbox.create(timeout=300)
    sbx.set_timeout(1)
    _wait_for(lambda: not sbx.is_running())
    with pytest.raises(SandboxNotFoundException):
        sbx.get_info()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id)
    assert Sandbox.kill(sbx.sandbox_id) is False


def test_timeout_zero_expires_at_once(hearth: Hearth) -> None:
    sbx = Sandbox.create(timeout=300)
    sbx.set_timeout(0)
    _wait_for(lambda: not sbx.is_running())


def test_kill_while_a_command_streams(hearth: Hearth) -> None:
    sbx = Sandbox.create(timeout=120)
    lines: list[str] = []
    first = threading.Event()
    outcome: dict[str, BaseException] = {}

    def on_stdout(line: str) -> None:
        lines.append(line)
        first.set()

    handle = sbx.commands.run("while true; do echo tick; sleep 0.1; done", background=True)

    def wait() -> None:  # the sync SDK streams while `wait()` iterates
        try:
            handle.wait(on_stdout=on_stdout)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            outcome["error"] = e

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert first.wait(30), "no output streamed"
    Sandbox.kill(sbx.sandbox_id)
    waiter.join(30)
    assert not waiter.is_alive(), "the stream did not end when the sandbox was killed"
    assert isinstance(outcome.get("error"), SandboxNotRunningException), outcome
    assert not sbx.is_running()
    assert lines[0].startswith("tick")


# --- security --------------------------------------------------------------------------


def test_secure_sandbox_signed_urls(hearth: Hearth) -> None:
    sbx = Sandbox.create(secure=True, timeout=60)
    try:
        sbx.files.write("signed.txt", "signed content")
        # The URLs carry no routing header: the gateway finds the sandbox by signature.
        download = sbx.download_url("signed.txt")
        assert download.startswith(hearth.sandbox_url + "/files?")
        response = httpx.get(download)
        assert response.status_code == 200, response.text
        assert response.text == "signed content"

        upload = sbx.upload_url("uploaded.txt", use_signature_expiration=60)
        response = httpx.post(upload, files={"file": ("uploaded.txt", b"via url")})
        assert response.status_code == 200, response.text
        assert sbx.files.read("uploaded.txt") == "via url"

        expired = sbx.download_url("signed.txt", use_signature_expiration=-10)
        response = httpx.get(expired)
        assert response.status_code == 401
        assert response.json() == {"code": 401, "message": "signature is already expired"}

        missing = httpx.get(sbx.download_url("nope.txt"))
        assert missing.status_code == 404

        # envd still wants the token on everything else.
        headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
        assert httpx.get(f"{hearth.sandbox_url}/envs", headers=headers).status_code == 401
    finally:
        sbx.kill()
    assert httpx.get(download).status_code != 200


def test_teams_cannot_see_each_other(hearth: Hearth, other_team_key: str, tag: str) -> None:
    sbx = Sandbox.create(metadata={"tag": tag}, timeout=60)
    try:
        theirs = {"api_key": other_team_key}
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(sbx.sandbox_id, **theirs)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.connect(sbx.sandbox_id, **theirs)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.set_timeout(sbx.sandbox_id, 1, **theirs)
        assert Sandbox.kill(sbx.sandbox_id, **theirs) is False
        listed = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), **theirs).next_items()
        assert listed == []
        with httpx.Client(base_url=hearth.api_url, headers={"X-API-Key": other_team_key}) as api:
            response = api.get(f"/sandboxes/{sbx.sandbox_id}")
            assert response.status_code == 404
            assert response.json() == {
                "code": 404,
                "message": f"Sandbox \"{sbx.sandbox_id}\" doesn't exist or you don't have"
                " access to it",
            }
        assert sbx.is_running()
    finally:
        sbx.kill()


def test_bad_api_key(hearth: Hearth) -> None:
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "0" * 40)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="not-a-key").next_items()
