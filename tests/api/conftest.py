"""A real `hearth serve` for the API tests, and the E2B SDK pointed at it (recipe A).

The server runs in a thread of this process (its own event loop), through the same
`hearth.serve.serve` the command line runs, on a random loopback port with a temporary
data directory and SQLite. Sandboxes come from the node's isolated runtime (`hearth serve
--runtime isolated`): each is an envd in its own namespaces over a throwaway Debian root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hearth.serve import ServerThread

if TYPE_CHECKING:
    from e2b import Sandbox

ROOT = Path(__file__).parents[2]


@dataclass(frozen=True)
class Hearth:
    """The running server as the tests see it."""

    api_url: str
    sandbox_url: str
    domain: str
    api_key: str
    port: int
    database_url: str

    def env(self) -> dict[str, str]:
        return {
            "E2B_API_KEY": self.api_key,
            "E2B_API_URL": self.api_url,
            "E2B_SANDBOX_URL": self.sandbox_url,
            "E2B_DOMAIN": self.domain,
        }


@pytest.fixture(scope="session")
def hearth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hearth]:
    if os.geteuid() != 0:
        pytest.skip("needs root: sandboxes run in user, mount and pid namespaces")
    if not (ROOT / "src/hearth/envd/__main__.py").exists():
        pytest.skip("envd is not there")
    from hearth.serve import ServeOptions

    # Build steps run in container sandboxes, whose ids must search every parent.
    data = Path(tempfile.mkdtemp(prefix="hearth-data-", dir="/var/tmp"))
    data.chmod(0o755)
    url = f"sqlite:///{data}/hearth.db"
    options = ServeOptions(
        host="127.0.0.1", port=0, data_dir=data, database_url=url, runtime="isolated"
    )
    server = ServerThread(options)
    running = server.start()
    assert running.api_key, "a fresh data directory must print the first API key"
    info = Hearth(
        api_url=running.api_url,
        sandbox_url=running.sandbox_url,
        domain=running.domain,
        api_key=running.api_key,
        port=running.port,
        database_url=url,
    )
    with pytest.MonkeyPatch.context() as patch:
        for name, value in info.env().items():
            patch.setenv(name, value)
        patch.delenv("E2B_DEBUG", raising=False)
        try:
            yield info
        finally:
            # The sandboxes this server started are envds below this process (other work
            # on the machine may run envds too; they are not this server's to account for).
            ours = _envd_processes() & _descendants(os.getpid())
            assert server.stop(), "hearth serve did not stop"
    shutil.rmtree(data, ignore_errors=True)
    left = sorted(pid for pid in ours if _alive(pid))
    assert not left, f"sandboxes left running after the server stopped: {left}"


def _envd_processes() -> set[int]:
    """Host pids whose command line runs hearth.envd (every sandbox has one)."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"hearth.envd" in f.read().split(b"\0"):
                    found.add(int(entry))
        except (OSError, ValueError):
            continue
    return found


def _descendants(root: int) -> set[int]:
    """Every process below `root` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="session")
def other_team_key(hearth: Hearth) -> str:
    return team_key(hearth, "other")


def npm_installed(directory: Path, package: str) -> Path:
    """`directory`'s locked npm packages, installed on first use (`npm ci`): its
    node_modules. Skips the test where there is no node or npm."""
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        pytest.skip("node and npm are needed")
    modules = directory / "node_modules"
    if not (modules / package / "package.json").is_file():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=directory, capture_output=True, text=True
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return modules


E2B_CLI_DIR = Path(__file__).with_name("cli")


@pytest.fixture(scope="module")
def e2b_cli() -> Path:
    """The E2B CLI pinned in tests/api/cli, installed on first use."""
    return npm_installed(E2B_CLI_DIR, "@e2b/cli") / ".bin" / "e2b"


def e2b_cli_env(hearth: Hearth) -> dict[str, str]:
    """The CLI's environment: the server's variables, a HOME of its own (no user config),
    no colour and no update check (there is no internet)."""
    home = str(E2B_CLI_DIR)
    return {**os.environ, **hearth.env(), "HOME": home, "NO_COLOR": "1", "NO_UPDATE_NOTIFIER": "1"}


def run_e2b_cli(
    e2b_cli: Path, hearth: Hearth, *args: str, cwd: Path | None = None, check: bool = True
) -> str:
    """`e2b ARGS` as a user runs it against `hearth` (E2B_API_URL, E2B_API_KEY, no colour);
    its stdout. With `check`, a non-zero exit fails the test with both outputs."""
    done = subprocess.run(
        [str(e2b_cli), *args],
        cwd=cwd,
        env=e2b_cli_env(hearth),
        capture_output=True,
        text=True,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"e2b {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def run_npm_script(script: Path, env: dict[str, str], timeout: float = 600) -> dict[str, list]:
    """Run a Node script with the npm `e2b` SDK of tests/sdk/npm; returns the values it
    printed as `RESULT <key> <json>` lines, by key, in order. `timeout` only keeps a hung
    stream from hanging the suite; no speed is asserted."""
    npm = ROOT / "tests" / "sdk" / "npm"
    npm_installed(npm, "e2b")
    done = subprocess.run(
        ["node", "--input-type=module", "-e", script.read_text()],
        cwd=npm,  # resolves `e2b` from its node_modules
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    results: dict[str, list] = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            _, key, value = line.split(" ", 2)
            results.setdefault(key, []).append(json.loads(value))
    return results


def team_key(hearth: Hearth, team_name: str) -> str:
    """An API key of a new team `team_name`, made in the server's database."""
    from hearth import store

    async def make() -> str:
        async with await store.open(hearth.database_url) as opened:
            team = await opened.create_team(team_name)
            key, _ = await opened.create_api_key(team.id, "tests")
            return key

    return asyncio.run(make())


@contextlib.contextmanager
def served_containers(
    prefix: str, max_snapshots: int | None = None, **options: object
) -> Iterator[Hearth]:
    """A container-runtime `hearth serve` on a fresh searchable data directory, the SDK's
    variables pointing at it; every sandbox left is killed before the server stops
    (container sandboxes outlive it). `options`: more of `ServeOptions`."""
    if os.geteuid() != 0:
        pytest.skip("needs root: container sandboxes")
    data = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    data.chmod(0o755)  # the runtime's unprivileged ids search every parent
    server, info = serve_containers(data, max_snapshots=max_snapshots, **options)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in info.env().items():
                patch.setenv(name, value)
            patch.delenv("E2B_DEBUG", raising=False)
            yield info
            from e2b import Sandbox

            for sandbox in Sandbox.list(limit=100).next_items():
                Sandbox.kill(sandbox.sandbox_id)
    finally:
        assert server.stop(), "hearth serve did not stop"
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def served_network(prefix: str, dns: str) -> Iterator[Hearth]:
    """`served_containers` on every address (sandboxes reach it at their gateway, as
    they reach another sandbox's ports) whose sandboxes resolve names with `dns`."""
    with served_containers(prefix, host="0.0.0.0", sandbox_dns=(dns,)) as hearth:
        yield hearth


@pytest.fixture
def sandbox(hearth: Hearth) -> Iterator[Sandbox]:
    """A `base` sandbox of the module's server, killed after the test (modules that want
    another shape define their own)."""
    from e2b import Sandbox

    sbx = Sandbox.create("base", timeout=300, metadata={"test": uuid.uuid4().hex})
    try:
        yield sbx
    finally:
        sbx.kill()


@pytest.fixture
def container_data_dir() -> Iterator[Path]:
    """A data directory for a container-runtime server: the runtime's unprivileged ids
    must be able to search every parent, which rules out pytest's tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="hearth-containers-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def serve_containers(
    data_dir: Path,
    port: int = 0,
    pool_sizes: dict[str, int] | None = None,
    max_snapshots: int | None = None,
    **options: object,
) -> tuple[ServerThread, Hearth]:
    """`hearth serve --runtime container` in a thread; returns it and how to reach it.
    No warm pool unless `pool_sizes` asks for one (other tests count every sandbox)."""
    from hearth.serve import ServeOptions

    url = f"sqlite:///{data_dir}/hearth.db"
    serve = ServeOptions(
        **{
            "host": "127.0.0.1",
            "port": port,
            "data_dir": data_dir,
            "database_url": url,
            "runtime": "container",
            "pool_sizes": pool_sizes or {},
            "max_snapshots": max_snapshots,
            **options,
        }
    )
    server = ServerThread(serve)
    running = server.start()
    info = Hearth(
        api_url=running.api_url,
        sandbox_url=running.sandbox_url,
        domain=running.domain,
        api_key=running.api_key or "",
        port=running.port,
        database_url=url,
    )
    return server, info
