"""The warm pool through `hearth serve --runtime container` and the real E2B SDK.

A plain `Sandbox.create()` claims a sandbox the node started ahead; to the SDK it is the
create's own in every way: its env vars and access token, pause and resume, and its id
across a restart of the server. Pool members are out of the proxy's reach until claimed,
a create the pool does not fit starts cold, and nothing is left once the server stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox

from hearth.serve import ServerThread

from .conftest import Hearth, serve_containers

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: containers and network slots"),
]

POOL = {"base": 2}


def _records(data_dir: Path) -> dict[str, dict]:
    """Every sandbox record of the node, by the sandbox's own id."""
    found = {}
    sandboxes = data_dir / "node" / "sandboxes"
    for entry in sandboxes.iterdir() if sandboxes.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            found[entry.name] = json.loads((entry / "record.json").read_text())
    return found


def _waiting(data_dir: Path) -> set[str]:
    return {
        name
        for name, r in _records(data_dir).items()
        if r.get("pooled") and r.get("claimed_as") is None and r.get("monitor_pid")
    }


def _filled(server: ServerThread, size: int, kind: str = "base") -> set[str]:
    """The pool's members once `size` of `kind` are ready (the node says so)."""
    assert server.running is not None
    node = server.running.app.state.node  # type: ignore[attr-defined]
    for _ in range(1800):  # bounded: a member starts in well under a second (base)
        if node.pooled().get(kind) == size:
            return _waiting(node.data_dir.parent)
        time.sleep(0.1)
    raise AssertionError(f"the pool holds {node.pooled()}, not {size} {kind}")


def _kill_all() -> None:
    """Kill what a failed test left (a stopped server keeps container sandboxes)."""
    for info in Sandbox.list(limit=100).next_items():
        with contextlib.suppress(Exception):
            Sandbox.kill(info.sandbox_id)


def _envd_status(hearth: Hearth, sandbox_id: str, token: str | None) -> int:
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "49983"}
    if token:
        headers["X-Access-Token"] = token
    return httpx.get(f"{hearth.sandbox_url}/envs", headers=headers, timeout=30).status_code


def test_a_pooled_sandbox_is_the_creates_own(container_data_dir, monkeypatch) -> None:
    data_dir = container_data_dir
    server, running = serve_containers(data_dir, pool_sizes=POOL)
    for name, value in running.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    try:
        members = _filled(server, 2)
        for member in members:  # nobody's yet: not routed
            assert _envd_status(running, member, None) == 502

        sandbox = Sandbox.create("base", envs={"POOL_TEST": "sdk"}, timeout=300)
        claimed = [
            n for n, r in _records(data_dir).items() if r["claimed_as"] == sandbox.sandbox_id
        ]
        assert len(claimed) == 1 and claimed[0] in members
        assert sandbox.commands.run("echo $POOL_TEST").stdout == "sdk\n"
        assert sandbox.commands.run("echo $E2B_SANDBOX_ID").stdout.strip() == sandbox.sandbox_id
        sandbox.files.write("/home/user/kept.txt", "kept")
        assert sandbox.files.read("/home/user/kept.txt") == "kept"
        token = sandbox._envd_access_token
        assert token
        assert _envd_status(running, sandbox.sandbox_id, None) == 401
        assert _envd_status(running, sandbox.sandbox_id, token) == 200
        assert _envd_status(running, claimed[0], token) == 502  # only by the API's id

        assert sandbox.pause() is True
        again = Sandbox.connect(sandbox.sandbox_id)
        assert again.files.read("/home/user/kept.txt") == "kept"
        assert again.commands.run("echo $POOL_TEST").stdout == "sdk\n"

        _filled(server, 2)  # refilled in the background
        # A create with network rules claims one too, its slot given the create's rules.
        offline = Sandbox.create("base", allow_internet_access=False, timeout=300)
        (record,) = [
            r for r in _records(data_dir).values() if r.get("claimed_as") == offline.sandbox_id
        ]
        assert record["egress"]["deny"] == ["0.0.0.0/0"]
        assert offline.commands.run("echo claimed").stdout == "claimed\n"
        assert offline.kill() is True
        left = _waiting(data_dir)
    except BaseException:
        _kill_all()
        raise
    finally:
        assert server.stop(), "hearth serve did not stop"
    # Stopped, the server keeps the claimed sandbox for its next start, not the pool.
    assert not left & set(_records(data_dir))

    server, _ = serve_containers(data_dir, running.port, pool_sizes=POOL)
    try:
        assert sandbox.sandbox_id in [s.sandbox_id for s in Sandbox.list().next_items()]
        again = Sandbox.connect(sandbox.sandbox_id)
        assert again.commands.run("echo $POOL_TEST").stdout == "sdk\n"
        assert again.files.read("/home/user/kept.txt") == "kept"
        assert _envd_status(running, sandbox.sandbox_id, None) == 401
        assert again.kill() is True
        _filled(server, 2)
    finally:
        _kill_all()
        assert server.stop(), "hearth serve did not stop"
    assert _records(data_dir) == {}
    netns = data_dir / "node" / "netns"
    assert not netns.exists() or list(netns.iterdir()) == []


def test_a_pooled_code_interpreter_has_the_creates_env_vars(container_data_dir, monkeypatch):
    from e2b_code_interpreter import Sandbox as CodeInterpreter

    data_dir = container_data_dir
    server, running = serve_containers(data_dir, pool_sizes={"code-interpreter-v1": 1})
    for name, value in running.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    try:
        members = _filled(server, 1, "code-interpreter-v1")
        sandbox = CodeInterpreter.create(envs={"POOL_TEST": "kernel"}, timeout=300)
        claimed = [
            n for n, r in _records(data_dir).items() if r["claimed_as"] == sandbox.sandbox_id
        ]
        assert len(claimed) == 1 and claimed[0] in members
        # The kernel was warm before the create: it reads the env vars from envd.
        assert sandbox.run_code("import os; os.environ['POOL_TEST']").text == "kernel"
        assert sandbox.run_code("os.environ['E2B_SANDBOX_ID']").text == sandbox.sandbox_id
        assert sandbox.kill() is True
    finally:
        _kill_all()
        assert server.stop(), "hearth serve did not stop"
    assert _records(data_dir) == {}


def test_a_users_template_is_pooled_with_its_newest_build(container_data_dir, monkeypatch):
    """HEARTH_POOL_SIZE may name a user's template: each build of it that becomes ready
    refills the pool, and members of the build before go."""
    from e2b import Template

    data_dir = container_data_dir
    server, running = serve_containers(data_dir, pool_sizes={"pooled-tpl": 1})
    for name, value in running.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    try:
        first = Template.build(
            Template().from_template("base").run_cmd("echo one > /tmp/version"), "pooled-tpl"
        )
        members = _filled(server, 1, first.template_id)
        sandbox = Sandbox.create("pooled-tpl")
        claimed = [
            n for n, r in _records(data_dir).items() if r["claimed_as"] == sandbox.sandbox_id
        ]
        assert len(claimed) == 1 and claimed[0] in members
        assert sandbox.commands.run("cat /tmp/version").stdout == "one\n"
        sandbox.kill()
        Template.build(
            Template().from_template("base").run_cmd("echo two > /tmp/version"), "pooled-tpl"
        )
        refilled = _filled(server, 1, first.template_id)
        assert not refilled & members  # the first build's member was replaced
        sandbox = Sandbox.create("pooled-tpl")
        assert sandbox.commands.run("cat /tmp/version").stdout == "two\n"
        claimed = [
            n for n, r in _records(data_dir).items() if r["claimed_as"] == sandbox.sandbox_id
        ]
        assert len(claimed) == 1 and claimed[0] in refilled
        sandbox.kill()
    finally:
        _kill_all()
        assert server.stop(), "hearth serve did not stop"
    assert _records(data_dir) == {}
