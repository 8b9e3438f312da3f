"""Snapshots and forks through the released E2B Python SDK and on the wire (spec §2.3,
§7.2), against a real container-runtime `hearth serve`: a snapshot is a template that
starts many sandboxes with the source's files and envVars, the source going on; a fork
copies a running sandbox N times; names, tags, lists, deletion, team isolation, the
per-team limit, a restart in between, and nothing left behind.

Container snapshots keep files, not memory (CRIU cannot checkpoint on these kernels):
their sandboxes start the template's start command again. The microVM runtime's keep
memory (tests/microvm).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox, SandboxException, Template, wait_for_port
from e2b.exceptions import RateLimitException

from .conftest import Hearth, run_npm_script, serve_containers, served_containers, team_key

pytestmark = pytest.mark.root

JS_SNAPSHOTS = Path(__file__).with_name("snapshot_fork.mjs")


@pytest.fixture(scope="module")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-snapshots-", max_snapshots=8) as info:
        yield info


@pytest.fixture
def api(hearth: Hearth) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=hearth.api_url, headers={"X-API-Key": hearth.api_key}, timeout=120
    ) as client:
        yield client


@pytest.fixture(autouse=True)
def no_snapshots_left(api: httpx.Client) -> Iterator[None]:
    """Each test starts with no snapshots (the team's limit is small) and deletes its own."""
    yield
    for snapshot in api.get("/snapshots").json():
        api.delete(f"/templates/{snapshot['snapshotID'].split(':')[0].replace('/', '%2F')}")


def _data_dir(hearth: Hearth) -> Path:
    return Path(hearth.database_url.removeprefix("sqlite:///")).parent


def _saved_layers(hearth: Hearth) -> set[str]:
    layers = _data_dir(hearth) / "node" / "layers"
    return (
        {p.name for p in layers.iterdir() if not p.name.startswith(".")}
        if layers.is_dir()
        else set()
    )


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == status
    return body["message"]


def test_a_snapshot_starts_many_sandboxes_with_its_files_and_env(hearth: Hearth) -> None:
    before = _saved_layers(hearth)
    source = Sandbox.create("base", envs={"GREETING": "hello"})
    try:
        source.files.write("/home/user/state.txt", "before the snapshot")
        counter = source.commands.run(
            "i=0; while true; do i=$((i+1)); echo $i > /tmp/c; mv /tmp/c /tmp/count;"
            " sleep 0.05; done",
            background=True,
        )
        snapshot = source.create_snapshot()
        assert re.fullmatch(r"[a-z0-9]{20}:default", snapshot.snapshot_id)
        assert snapshot.names == []
        # The source goes on: its process still counts, and it may change its files.
        seen = int(source.files.read("/tmp/count"))
        time.sleep(0.3)
        assert int(source.files.read("/tmp/count")) > seen
        source.files.write("/home/user/state.txt", "after the snapshot")

        copies = [Sandbox.create(snapshot.snapshot_id) for _ in range(2)]
        try:
            for copy in copies:
                assert copy.sandbox_id != source.sandbox_id
                assert copy.files.read("/home/user/state.txt") == "before the snapshot"
                assert copy.commands.run("echo $GREETING").stdout == "hello\n"
                assert copy.commands.run("whoami").stdout == "user\n"
                assert copy.commands.run("pwd").stdout == "/home/user\n"
                copy.files.write("/home/user/mine.txt", copy.sandbox_id)
            # Independent of each other.
            assert not copies[1].files.exists(f"/home/user/{copies[0].sandbox_id}")
            assert copies[0].files.read("/home/user/mine.txt") == copies[0].sandbox_id
            assert copies[1].files.read("/home/user/mine.txt") == copies[1].sandbox_id
        finally:
            for copy in copies:
                copy.kill()
        counter.kill()
    finally:
        source.kill()
    assert Sandbox.delete_snapshot(snapshot.snapshot_id)
    assert not Sandbox.delete_snapshot(snapshot.snapshot_id)
    assert _saved_layers(hearth) == before


def test_named_snapshots_tags_lists_and_overwrite(api: httpx.Client) -> None:
    name = _unique("snap")
    source = Sandbox.create("base")
    try:
        source.files.write("/home/user/v", "1")
        first = source.create_snapshot(name=name)
        assert first.snapshot_id == f"default/{name}:default"
        assert first.names == [f"default/{name}"]
        tagged = source.create_snapshot(name=f"{name}:v1")
        assert tagged.snapshot_id == f"default/{name}:v1"
        assert tagged.names == [f"default/{name}"]

        listed = api.get("/snapshots", params={"sandboxID": source.sandbox_id}).json()
        assert {s["snapshotID"] for s in listed} == {first.snapshot_id, tagged.snapshot_id}
        assert all(s["sandboxID"] == source.sandbox_id and s["memory"] is False for s in listed)
        by_name = api.get("/snapshots", params={"name": f"{name}:v1"}).json()
        assert [s["snapshotID"] for s in by_name] == [tagged.snapshot_id]
        sdk_listed = Sandbox.list_snapshots(sandbox_id=source.sandbox_id).next_items()
        assert {s.snapshot_id for s in sdk_listed} == {first.snapshot_id, tagged.snapshot_id}
        assert api.get("/snapshots", params={"sandboxID": "nosuchsandbox"}).json() == []

        # Paging: one per page, the token on every page but the last.
        page = api.get("/snapshots", params={"sandboxID": source.sandbox_id, "limit": 1})
        assert len(page.json()) == 1 and page.headers.get("X-Next-Token")
        rest = api.get(
            "/snapshots",
            params={"sandboxID": source.sandbox_id, "nextToken": page.headers["X-Next-Token"]},
        )
        assert len(rest.json()) == 1 and not rest.headers.get("X-Next-Token")

        # The same name again: a new build, served at once.
        source.files.write("/home/user/v", "2")
        again = source.create_snapshot(name=name)
        assert again.snapshot_id == first.snapshot_id
        for ref, value in ((name, "2"), (f"{name}:v1", "1"), (first.snapshot_id, "2")):
            copy = Sandbox.create(ref)
            try:
                assert copy.files.read("/home/user/v") == value, ref
            finally:
                copy.kill()
        # Snapshots are not listed as templates.
        assert name not in {a for t in api.get("/templates").json() for a in t["aliases"]}
        assert Sandbox.delete_snapshot(name)
        assert api.get("/snapshots", params={"name": name}).json() == []
        with pytest.raises(SandboxException, match="404"):
            Sandbox.create(name)
    finally:
        source.kill()


def test_a_paused_sandbox_is_snapshotted_as_it_lies(hearth: Hearth) -> None:
    source = Sandbox.create("base")
    try:
        source.files.write("/home/user/p", "paused")
        source.beta_pause()
        snapshot = Sandbox.create_snapshot(source.sandbox_id)
        info = Sandbox.get_info(source.sandbox_id)
        assert info.state.value == "paused"
        copy = Sandbox.create(snapshot.snapshot_id)
        try:
            assert copy.files.read("/home/user/p") == "paused"
        finally:
            copy.kill()
        resumed = Sandbox.connect(source.sandbox_id)
        assert resumed.files.read("/home/user/p") == "paused"
    finally:
        source.kill()


def test_deleting_a_snapshot_keeps_its_sandboxes_then_frees_its_layer(hearth: Hearth) -> None:
    before = _saved_layers(hearth)
    source = Sandbox.create("base")
    try:
        source.files.write("/home/user/d", "kept")
        snapshot = source.create_snapshot()
        copy = Sandbox.create(snapshot.snapshot_id)
        paused = Sandbox.create(snapshot.snapshot_id)
        paused.beta_pause(keep_memory=False)
        assert Sandbox.delete_snapshot(snapshot.snapshot_id)
        with pytest.raises(SandboxException, match="404"):
            Sandbox.create(snapshot.snapshot_id)
        assert copy.files.read("/home/user/d") == "kept"
        assert len(_saved_layers(hearth) - before) == 1  # held by its sandboxes
        # A filesystem-only pause boots again over the deleted snapshot's layer.
        assert Sandbox.connect(paused.sandbox_id).files.read("/home/user/d") == "kept"
        copy.kill()
        assert len(_saved_layers(hearth) - before) == 1
        Sandbox.kill(paused.sandbox_id)
        assert _saved_layers(hearth) == before
    finally:
        source.kill()


def test_fork_copies_a_running_sandbox(hearth: Hearth, api: httpx.Client) -> None:
    before = _saved_layers(hearth)
    source = Sandbox.create("base", metadata={"who": "source"}, envs={"E": "1"})
    try:
        source.files.write("/home/user/f", "forked")
        end_before = Sandbox.get_info(source.sandbox_id).end_at
        (one,) = source.fork(timeout=60)
        assert isinstance(one, Sandbox) and one.sandbox_id != source.sandbox_id
        assert one.files.read("/home/user/f") == "forked"
        three = Sandbox.fork(source.sandbox_id, count=3, timeout=60)
        assert all(isinstance(s, Sandbox) for s in three)
        assert len({s.sandbox_id for s in [one, *three]}) == 4
        for copy in three:
            assert copy.files.read("/home/user/f") == "forked"
            assert copy.commands.run("echo $E").stdout == "1\n"
            assert Sandbox.get_info(copy.sandbox_id).metadata == {"who": "source"}
        three[0].files.write("/home/user/f", "changed")
        assert three[1].files.read("/home/user/f") == "forked"
        assert source.files.read("/home/user/f") == "forked"
        info = Sandbox.get_info(source.sandbox_id)
        assert info.state.value == "running" and info.end_at == end_before
        for copy in [one, *three]:
            copy.kill()
        assert _saved_layers(hearth) == before  # no template keeps a fork's state
        # Bounds and states, as infra answers them.
        fork = f"/sandboxes/{source.sandbox_id}/fork"
        assert "at least 1" in _error(api.post(fork, json={"count": 0}), 400)
        assert "greater than 100" in _error(api.post(fork, json={"count": 101}), 400)
        assert "concurrent" in _error(api.post(fork, json={"count": 100}), 400)
        _error(api.post("/sandboxes/nosuchsandbox0000000/fork", json={}), 404)
        source.beta_pause()
        assert "paused" in _error(api.post(fork, json={}), 409)
    finally:
        source.kill()
    _error(api.post(f"/sandboxes/{source.sandbox_id}/fork", json={}), 404)
    with pytest.raises(SandboxException):
        Sandbox.fork(source.sandbox_id)


def test_snapshots_belong_to_the_team(hearth: Hearth, api: httpx.Client) -> None:
    other_key = team_key(hearth, "snapshot-others")
    source = Sandbox.create("base")
    try:
        snapshot = source.create_snapshot(name=_unique("mine"))
        with httpx.Client(base_url=hearth.api_url, headers={"X-API-Key": other_key}) as other:
            assert other.get("/snapshots").json() == []
            _error(other.post(f"/sandboxes/{source.sandbox_id}/snapshots", json={}), 404)
            _error(other.post(f"/sandboxes/{source.sandbox_id}/fork", json={}), 404)
            ref = snapshot.snapshot_id.replace("/", "%2F")
            _error(other.delete(f"/templates/{ref.split(':')[0]}"), 404)
            created = other.post("/v2/sandboxes", json={"templateID": snapshot.snapshot_id})
            _error(created, 404)
        assert Sandbox.delete_snapshot(snapshot.snapshot_id)
    finally:
        source.kill()


def test_bad_snapshot_requests(api: httpx.Client) -> None:
    _error(api.post("/sandboxes/nosuchsandbox0000000/snapshots", json={}), 404)
    source = Sandbox.create("base")
    try:
        snapshots = f"/sandboxes/{source.sandbox_id}/snapshots"
        assert "Invalid" in _error(api.post(snapshots, json={"name": "bad name!"}), 400)
        assert "namespace" in _error(api.post(snapshots, json={"name": "others/x"}), 400)
        assert "taken" in _error(api.post(snapshots, json={"name": "base"}), 400)
        with pytest.raises(SandboxException):
            source.create_snapshot(name="Not Valid")
    finally:
        source.kill()


def test_the_team_limit_is_a_429(api: httpx.Client) -> None:
    source = Sandbox.create("base")
    try:
        taken = [source.create_snapshot() for _ in range(8)]
        with pytest.raises(RateLimitException, match="maximum number of snapshots"):
            source.create_snapshot()
        assert Sandbox.delete_snapshot(taken[0].snapshot_id)
        source.create_snapshot()
    finally:
        source.kill()


def test_snapshots_survive_a_restart(container_data_dir: Path) -> None:
    server, info = serve_containers(container_data_dir)
    port = info.port
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in info.env().items():
                patch.setenv(name, value)
            source = Sandbox.create("base")
            source.files.write("/home/user/r", "restarted")
            snapshot = source.create_snapshot(name="survivor")
            source.kill()
            assert server.stop()
            server, _ = serve_containers(container_data_dir, port=port)
            copy = Sandbox.create(snapshot.snapshot_id)
            assert copy.files.read("/home/user/r") == "restarted"
            copy.kill()
            assert Sandbox.delete_snapshot(snapshot.snapshot_id)
    finally:
        assert server.stop()
    assert not any((container_data_dir / "node" / "layers").glob("snap*"))


def test_npm_sdk_snapshots_and_forks(hearth: Hearth) -> None:
    name = _unique("js-snap")
    results = run_npm_script(JS_SNAPSHOTS, {**hearth.env(), "HEARTH_SNAPSHOT_NAME": name})
    snapshot_id = f"default/{name}:default"
    assert results["snapshot"] == [{"snapshotId": snapshot_id, "names": [f"default/{name}"]}]
    assert results["listed"] == [[snapshot_id]]
    assert results[f"read:{snapshot_id}"] == ["from js"]
    assert results[f"read:{name}"] == ["from js"]
    assert results["forks"] == [2]
    assert results["fork-read"] == ["from js", "from js"]
    assert results["running"] == [True]
    assert results["deleted"] == [True]
    assert results["deleted-again"] == [False]


def test_a_container_snapshot_starts_its_templates_start_command_again(
    api: httpx.Client,
) -> None:
    """Files, not memory, on containers: the template's start command runs again in a
    sandbox of the snapshot (and is ready before the create answers)."""
    name = _unique("served")
    Template.build(
        Template()
        .from_template("base")
        .set_start_cmd("cd /home/user && python3 -m http.server 8000", wait_for_port(8000)),
        name,
    )
    source = Sandbox.create(name)
    try:
        source.files.write("/home/user/page.txt", "served again")
        snapshot = source.create_snapshot()
        copy = Sandbox.create(snapshot.snapshot_id)
        try:
            page = copy.commands.run(
                'python3 -c "import urllib.request as u; print(u.urlopen('
                "'http://127.0.0.1:8000/page.txt').read().decode())\""
            )
            assert page.stdout == "served again\n"
        finally:
            copy.kill()
        assert Sandbox.delete_snapshot(snapshot.snapshot_id)
    finally:
        source.kill()
        api.delete(f"/templates/{name}")


def test_what_arrives_during_a_snapshot(api: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Infra's answers while a snapshot is being taken: another snapshot of the sandbox is
    a 409, a pause waits for it and is a 204, and a resume of a paused sandbox whose
    snapshot is being taken is a 409. The node's capture is held open to make it so."""
    from hearth.node.local import LocalNode

    entered, gate = threading.Event(), threading.Event()
    capture = LocalNode.snapshot

    async def held(self, sandbox_id: str, *, memory: bool = True):
        entered.set()
        await asyncio.to_thread(gate.wait)
        return await capture(self, sandbox_id, memory=memory)

    monkeypatch.setattr(LocalNode, "snapshot", held)
    source = Sandbox.create("base")
    sid = source.sandbox_id
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(api.post, f"/sandboxes/{sid}/snapshots", json={})
            entered.wait()
            assert "being snapshotted" in _error(
                api.post(f"/sandboxes/{sid}/snapshots", json={}), 409
            )
            pause = pool.submit(api.post, f"/sandboxes/{sid}/pause")
            gate.set()
            assert first.result().status_code == 201, first.result().text
            assert pause.result().status_code == 204, pause.result().text

            entered.clear()
            gate.clear()
            second = pool.submit(api.post, f"/sandboxes/{sid}/snapshots", json={})
            entered.wait()
            assert "being snapshotted" in _error(
                api.post(f"/sandboxes/{sid}/connect", json={"timeout": 60}), 409
            )
            gate.set()
            assert second.result().status_code == 201, second.result().text
        assert api.post(f"/sandboxes/{sid}/connect", json={"timeout": 60}).status_code == 201
    finally:
        gate.set()
        source.kill()
