"""Fixtures that point the real E2B SDKs at a real envd in an isolated root.

One envd per root kind (`debian`, `busybox`) runs for the whole session; pytest groups
the tests by that parameter, so only one of them is up at a time. The SDK runs in debug
mode (`E2B_DEBUG=true`: no control-plane call, every feature gate open) with
`E2B_SANDBOX_URL` naming envd's random loopback port.

A second envd, given an access token through `POST /init`, serves the tests of the
secured paths; the SDK is pointed at it by building the `Sandbox` the way `connect()`
does outside debug mode (an access token and the `X-Access-Token` header).
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from e2b import AsyncSandbox, ConnectionConfig, Sandbox
from packaging.version import Version

ROOTS = ("debian", "busybox")
# The version Hearth's envd matches (spec §3.7); the secured Sandbox reports it the way
# a create response would.
ENVD_VERSION = "0.6.13"
USER = "user"
HOME = "/home/user"


def _isolated():
    if os.geteuid() != 0:
        pytest.skip("needs root: envd runs in user, mount and pid namespaces")
    return pytest.importorskip(
        "hearth.node.runtime.isolated", reason="hearth.node.runtime.isolated is not there yet"
    )


@dataclass(frozen=True)
class Envd:
    """A running envd as the tests see it."""

    root: str
    url: str
    port: int
    handle: object  # the IsolatedEnvd

    @property
    def busybox(self) -> bool:
        return self.root == "busybox"


def envd_processes() -> set[int]:
    """Host pids whose command line runs hearth.envd."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"hearth.envd" in argv:
            found.add(int(entry))
    return found


def host_mounts() -> list[str]:
    """The host's mount points that the isolated runner could have made: under its run
    directories or the bundle's target. (Other mounts may come and go meanwhile, from
    other work on the machine; they are not this runner's to account for.)"""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if "hearth-envd-" in p or "/opt/hearth" in p]


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_isolated(kind: str):
    """An `IsolatedEnvd` for root `kind` on a free loopback port (not yet started)."""
    return _isolated().IsolatedEnvd(kind, port=0)


def assert_released(pid: int | None, state_dir, mounts_before: list[str]) -> None:
    """What an IsolatedEnvd must leave behind once stopped: nothing."""
    assert pid is None or not alive(pid), f"envd (host pid {pid}) still alive after stop()"
    assert state_dir is None or not os.path.exists(state_dir), f"{state_dir} left behind"
    assert host_mounts() == mounts_before, "mounts left in the host's namespace"


def state_dirs() -> set[str]:
    """The isolated runner's per-run directories that exist now."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "hearth-envd-*")))


@pytest.fixture(scope="session", params=ROOTS)
def envd(request: pytest.FixtureRequest) -> Iterator[Envd]:
    """The session's envd for one root kind, with the SDK's environment set for it."""
    before_pids = envd_processes()
    before_mounts = host_mounts()
    with start_isolated(request.param) as env:
        pid, state_dir = env.pid, env.state_dir
        ours = envd_processes() - before_pids
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("E2B_DEBUG", "true")
            mp.setenv("E2B_SANDBOX_URL", env.url)
            for name in ("E2B_API_KEY", "E2B_ACCESS_TOKEN", "E2B_DOMAIN", "E2B_API_URL"):
                mp.delenv(name, raising=False)
            yield Envd(root=request.param, url=env.url, port=env.port, handle=env)
    # The runner must take everything it made with it.
    assert_released(pid, state_dir, before_mounts)
    left = [p for p in ours if alive(p)]
    assert not left, f"envd processes left after IsolatedEnvd exited: {left}"


@pytest.fixture
def sandbox(envd: Envd) -> Sandbox:
    return Sandbox.create()


@pytest.fixture
async def async_sandbox(envd: Envd) -> AsyncSandbox:
    return await AsyncSandbox.create()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A name no other test uses on the same envd (all tests share its filesystem)."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60]
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def workdir(sandbox: Sandbox, name: str) -> Iterator[str]:
    """A fresh directory under the user's home, removed afterwards."""
    path = f"{HOME}/{name}"
    sandbox.files.make_dir(path)
    yield path
    sandbox.files.remove(path)


# --- a secured envd (access token set through /init) ---------------------------------


@dataclass(frozen=True)
class SecuredEnvd:
    url: str
    token: str


@pytest.fixture(scope="session")
def secured_envd() -> Iterator[SecuredEnvd]:
    """An envd (busybox root) that requires an access token, set the way the node does."""
    token = secrets.token_urlsafe(24)
    with start_isolated("busybox") as env:
        r = httpx.post(f"{env.url}/init", json={"accessToken": token}, timeout=10)
        assert r.status_code == 204, (r.status_code, r.text)
        yield SecuredEnvd(url=env.url, token=token)


def secured_sandbox(url: str, token: str | None, sandbox_cls: type = Sandbox):
    """A `Sandbox` wired like `connect()` wires one outside debug mode.

    Debug mode drops the access token; this builds the object with it, which is what
    makes the SDK send `X-Access-Token` and sign `download_url`/`upload_url`.
    """
    headers = {"X-Access-Token": token} if token is not None else {}
    config = ConnectionConfig(debug=True, sandbox_url=url, extra_sandbox_headers=headers)
    return sandbox_cls(
        sandbox_id="debug_sandbox_id",
        sandbox_domain=None,
        envd_version=Version(ENVD_VERSION),
        envd_access_token=token,
        connection_config=config,
    )
