"""`hearth serve` as a process of its own for the reliability suites, and what they
compare afterwards: the store's live rows, the host's containers, `leaks()`.

The server is `hearth serve --runtime container` in a child process on a fresh data
directory, so that its memory is its own (churn), a `kill -9` takes it down in the middle
of an operation (chaos) and a restart on the same data directory and port adopts what it
left. The warm pool is off (HEARTH_POOL_SIZE=0): every sandbox on the host is one a test
made, so once they are killed `leaks()` must be empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api.conftest import Hearth
from node.conftest import leaks

from hearth.node.runtime.container.oci import detect

# A start builds nothing (base is cached), but may wait for the host: a bound, no timing.
START_POLLS = 6000  # of 0.1 s
STOP_WAIT = 180.0


class ServeProcess:
    """`hearth serve` processes, one after another, on one data directory and port."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = env or {}  # more of the server's environment
        self.node_dir = data_dir / "node"
        self.database = data_dir / "hearth.db"
        self.log = data_dir / "serve.log"
        self.port = 0  # chosen by the first start, kept by the restarts
        self.api_key = ""  # printed by the first start only
        self.process: subprocess.Popen[bytes] | None = None
        self.hearth: Hearth | None = None
        # What the host held before the first start: other servers of the same test
        # session may keep sandboxes of their own, and they are not this one's leaks.
        self.held_before: dict[str, list] = {}

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self) -> Hearth:
        """Start it and wait until it prints recipe A (it then listens)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        out = self.data_dir / "serve.out"
        # The command line's data directory and its SQLite file, whatever the caller's.
        mine = ("E2B_", "HEARTH_DATA_DIR", "HEARTH_DATABASE_URL")
        env = {k: v for k, v in os.environ.items() if not k.startswith(mine)}
        env["HEARTH_POOL_SIZE"] = "0"
        env.update(self.env)
        argv = [sys.executable, "-m", "hearth.cli", "serve", "--runtime", "container"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--data-dir", str(self.data_dir), "--no-trust-ca"]
        with open(out, "wb") as stdout, open(self.log, "ab") as stderr:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env
            )
        recipe = self._recipe(out)
        self._wait_builds()
        if not self.port:
            self.api_key = recipe["E2B_API_KEY"]
            self.port = int(recipe["E2B_API_URL"].rsplit(":", 1)[1])
        self.hearth = Hearth(
            api_url=recipe["E2B_API_URL"],
            sandbox_url=recipe["E2B_SANDBOX_URL"],
            domain=recipe["E2B_DOMAIN"],
            api_key=self.api_key,
            port=self.port,
            database_url=f"sqlite:///{self.database}",
        )
        return self.hearth

    def _recipe(self, out: Path) -> dict[str, str]:
        assert self.process is not None
        for _ in range(START_POLLS):
            found = dict(re.findall(r"^export (E2B_[A-Z_]+)=(\S+)$", out.read_text(), re.M))
            if "E2B_DOMAIN" in found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"hearth serve did not start:\n{self.log_tail()}")

    def _wait_builds(self) -> None:
        """Wait for the builds a start runs in the background (the code interpreter's,
        from the cache): a test then finds the server idle, with no build sandbox."""
        for _ in range(START_POLLS):
            if not {"waiting", "building"} & set(build_states(self.database).values()):
                return
            time.sleep(0.1)
        raise AssertionError(f"the builds at start did not end:\n{self.log_tail()}")

    def kill(self) -> None:
        """`kill -9`: no cleanup of any kind runs."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        """SIGTERM, as a user stops it; its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"hearth serve did not stop:\n{self.log_tail()}") from None
        return self.process.returncode

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pss_kib(self) -> int:
        """The server's proportional set size (its share of shared pages counted)."""
        rollup = Path(f"/proc/{self.pid}/smaps_rollup").read_text()
        return int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)[1])

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def served(prefix: str, env: dict[str, str] | None = None) -> Iterator[ServeProcess]:
    """A started `ServeProcess` (`env`: more of its environment) on a fresh data
    directory, the SDK's variables pointing at it. Afterwards whatever is left is killed,
    the server stopped, and anything a failed test left on the host removed, so that the
    next test starts from a clean host."""
    if os.geteuid() != 0:
        pytest.skip("needs root: container sandboxes")
    data = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    data.chmod(0o755)  # the runtime's unprivileged ids search every parent
    server = ServeProcess(data, env)
    server.held_before = leaks(server.node_dir)
    try:
        hearth = server.start()
        with pytest.MonkeyPatch.context() as patch:
            for name, value in hearth.env().items():
                patch.setenv(name, value)
            patch.delenv("E2B_DEBUG", raising=False)
            try:
                yield server
            finally:
                if server.running():
                    with contextlib.suppress(Exception):
                        kill_all()
    finally:
        if server.process is not None:
            server.stop()
        sweep(server.node_dir)
        shutil.rmtree(data, ignore_errors=True)


def new_leaks(server: ServeProcess, timeout: float = 10.0) -> dict[str, list]:
    """`leaks()` of the server's node that the host did not hold before it started, given
    a moment (as `wait_no_leaks`) for what the kernel is still tearing down."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for kind, items in leaks(server.node_dir).items():
            before = {_identity(kind, i) for i in server.held_before.get(kind, [])}
            new = [i for i in items if _identity(kind, i) not in before]
            if new:
                found[kind] = new
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _identity(kind: str, item: object) -> str:
    """What names a leaked item across two looks (a process's state may change)."""
    if kind == "processes":
        return str(item).split()[0]
    return json.dumps(item, sort_keys=True)


def sandbox_ids(**opts: object) -> list[str]:
    """Every sandbox the SDK lists, running or paused, all pages."""
    from e2b import Sandbox

    found = []
    pages = Sandbox.list(limit=100, **opts)  # type: ignore[arg-type]
    while pages.has_next:
        found += [s.sandbox_id for s in pages.next_items()]
    return found


def kill_all() -> None:
    from e2b import Sandbox

    for sandbox_id in sandbox_ids():
        Sandbox.kill(sandbox_id)


def sweep(node_dir: Path) -> None:
    """Remove every sandbox under `node_dir` with a node that adopts them and stops:
    what a failed test may have left (the server keeps container sandboxes)."""
    from hearth.node.local import LocalNode

    async def adopt_and_close() -> None:
        async with LocalNode(node_dir, runtime="container"):
            pass

    if (node_dir / "sandboxes").is_dir():
        asyncio.run(adopt_and_close())


def live_rows(database: Path) -> dict[str, str]:
    """The store's sandboxes that are not killed: id -> state (running or paused)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT sandbox_id, state FROM sandboxes WHERE state != 'killed'")
        return dict(rows.fetchall())


def build_states(database: Path) -> dict[str, str]:
    """Every template build: id -> status (waiting, building, ready or error)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return dict(db.execute("SELECT build_id, status FROM template_builds").fetchall())


def host_sandboxes(node_dir: Path) -> dict[str, str]:
    """What the host holds of each sandbox, by the API's id: its container's status
    (running or paused, as the OCI runtime says), or "files" for a directory without a
    container (a filesystem-only pause). Build sandboxes are named build:ID, containers
    without a directory container:ID."""
    oci = detect(node_dir / "oci")
    found: dict[str, str] = {}
    sandboxes = node_dir / "sandboxes"
    names = sorted(os.listdir(sandboxes)) if sandboxes.is_dir() else []
    for name in names:
        try:
            record = json.loads((sandboxes / name / "record.json").read_text())
        except (OSError, ValueError):
            record = {}
        state = oci.state(name)
        status = state.get("status") if state and state.get("pid") else None
        key = record.get("claimed_as") or name
        if record.get("build"):
            key = f"build:{name}"
        found[key] = status or "files"
    for name in oci.containers():
        if name not in names:
            found[f"container:{name}"] = (oci.state(name) or {}).get("status") or "state"
    return found


def disagreements(server: ServeProcess) -> list[str]:
    """Where the store and the host disagree: a running row without a running
    container, a paused one without its container or files, and anything on the host
    that no live row names."""
    rows = live_rows(server.database)
    host = host_sandboxes(server.node_dir)
    wrong = []
    for sandbox_id, state in rows.items():
        held = host.get(sandbox_id)
        if state == "running" and held != "running":
            wrong.append(f"{sandbox_id}: the store says running, the host holds {held}")
        if state == "paused" and held not in ("paused", "files"):
            wrong.append(f"{sandbox_id}: the store says paused, the host holds {held}")
    wrong += [f"{name}: {held} on the host, no live row" for name, held in host.items()
              if name not in rows]  # fmt: skip
    return wrong
