"""`kill -9` of `hearth serve` in the middle of a create, a pause, a resume, a template
build and a file upload, each at a few moments, then a restart on the same data directory
and port (issue 15).

Each fault is fired at evidence that the operation is under way on the host (its
sandbox's directory, its container, a frozen cgroup, the build's log, the uploaded
file growing), then the server starts again. Container sandboxes outlive the server and
are adopted at the restart; what must hold after every fault:

- the SDK call that was cut off ends (it raises, unless its answer came just before the
  kill), and the restarted server answers: the SDK's `request_timeout` turns a hang
  into a failure;
- every sandbox is running and answers a command (a paused one once resumed), or is gone:
  the SDK's connect says it was not found and the host holds nothing of it;
- the store and the host agree: a running row has a running container, a paused one its
  frozen container or its files, and nothing on the host lacks a live row;
- in the end, once the rest is killed and the server stopped cleanly, `leaks()` finds
  nothing of its sandboxes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2b import NotFoundException, Sandbox, Template
from node.conftest import upper_layer

from .conftest import (
    ServeProcess,
    build_states,
    disagreements,
    host_sandboxes,
    kill_all,
    live_rows,
    new_leaks,
    sandbox_ids,
    served,
    sweep,
)

pytestmark = [pytest.mark.root, pytest.mark.long]

REQUEST_TIMEOUT = 30  # the SDK's, on every call: a server that never answers fails a test
POLLS = 20000  # of 0.5 ms while waiting for evidence: a bound, not a timing
UPLOAD_CHUNK = 256 * 1024
UPLOAD_CHUNKS = 16  # 4 MiB, sent a chunk at a time so that a kill lands inside it
AT_ONCE = "as it is sent"  # a moment: no evidence waited for
FAULTS: dict[str, list[int]] = {}  # kind -> [kills, of them while its call was in flight]
RECONCILED: list[int] = []  # one per restart found reconciled, for the summary


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    with served("hearth-chaos-") as server:
        yield server


@dataclass
class Outcome:
    """What the interrupted SDK call returned or raised."""

    returned: object = None
    raised: BaseException | None = None
    in_flight: bool = False  # the call had not ended when the server was killed


def interrupt(
    server: ServeProcess, kind: str, operation: Callable[[], object], under_way: Callable[[], bool]
) -> Outcome:
    """Run `operation` (an SDK call) in a thread; `kill -9` the server as soon as
    `under_way()` says the operation is in progress on the host (or once the call ended,
    if it ended first), then start the server again. The call must end by itself."""
    outcome = Outcome()

    def run() -> None:
        try:
            outcome.returned = operation()
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            outcome.raised = e

    thread = threading.Thread(target=run, name=f"chaos-{kind}", daemon=True)
    thread.start()
    for _ in range(POLLS):
        if not thread.is_alive() or under_way():
            break
        time.sleep(0.0005)
    outcome.in_flight = thread.is_alive()
    server.kill()
    thread.join(REQUEST_TIMEOUT * 4)
    assert not thread.is_alive(), f"the SDK's {kind} did not end after the server died"
    server.start()
    counts = FAULTS.setdefault(kind, [0, 0])
    counts[0] += 1
    counts[1] += outcome.in_flight
    return outcome


def assert_reconciled(server: ServeProcess, known: set[str]) -> None:
    """Store and host agree; every listed sandbox answers a command (paused ones after a
    resume); every other sandbox of `known` is not found and holds nothing on the host."""
    assert disagreements(server) == []
    listed = set(sandbox_ids(request_timeout=REQUEST_TIMEOUT))
    assert listed == set(live_rows(server.database))
    for sandbox_id in sorted(listed):
        again = Sandbox.connect(sandbox_id, timeout=300, request_timeout=REQUEST_TIMEOUT)
        assert again.commands.run("echo alive", timeout=REQUEST_TIMEOUT).stdout == "alive\n"
    host = host_sandboxes(server.node_dir)
    for sandbox_id in sorted(known - listed):
        with pytest.raises(NotFoundException):
            Sandbox.connect(sandbox_id, request_timeout=REQUEST_TIMEOUT)
        assert sandbox_id not in host
    assert disagreements(server) == []
    RECONCILED.append(1)


def _new_dir(server: ServeProcess, before: set[str]) -> Path | None:
    """A sandbox directory that was not there before, if one appeared."""
    sandboxes = server.node_dir / "sandboxes"
    new = set(os.listdir(sandboxes)) - before if sandboxes.is_dir() else set()
    return sandboxes / sorted(new)[0] if new else None


def _dirs(server: ServeProcess) -> set[str]:
    sandboxes = server.node_dir / "sandboxes"
    return set(os.listdir(sandboxes)) if sandboxes.is_dir() else set()


def _launched(directory: Path | None) -> bool:
    """Whether the sandbox's container was launched (its record names its monitor)."""
    if directory is None:
        return False
    try:
        return bool(json.loads((directory / "record.json").read_text()).get("monitor_pid"))
    except (OSError, ValueError):
        return False


def _frozen(sandbox_id: str) -> bool:
    """Whether the sandbox's cgroup is frozen (a memory pause), v1 or v2."""
    for path, frozen in (
        (f"/sys/fs/cgroup/freezer/hearth/{sandbox_id}/freezer.state", "FROZEN"),
        (f"/sys/fs/cgroup/hearth/{sandbox_id}/cgroup.freeze", "1"),
    ):
        with contextlib.suppress(OSError):
            return Path(path).read_text().strip() == frozen
    return False


def _container(server: ServeProcess, sandbox_id: str) -> bool:
    """Whether the OCI runtime has a container of that sandbox."""
    return (server.node_dir / "oci" / sandbox_id).exists()


def _create() -> Sandbox:
    return Sandbox.create("base", timeout=300, request_timeout=REQUEST_TIMEOUT)


# --- create --------------------------------------------------------------------------


def _interrupted_create(server: ServeProcess, moment: str) -> set[str]:
    """A create cut off at `moment`; the ids the client knows of afterwards."""
    before = _dirs(server)
    rows = set(live_rows(server.database))
    evidence = {
        AT_ONCE: lambda: True,
        "once its directory exists": lambda: _new_dir(server, before) is not None,
        "once its container runs": lambda: _launched(_new_dir(server, before)),
        "once the store holds its row": lambda: bool(set(live_rows(server.database)) - rows),
    }[moment]
    outcome = interrupt(server, "create", _create, evidence)
    if isinstance(outcome.returned, Sandbox):
        return {outcome.returned.sandbox_id}
    assert outcome.raised is not None
    return set()


@pytest.mark.parametrize(
    "moment", [AT_ONCE, "once its directory exists", "once the store holds its row"]
)
def test_a_create_killed_before_its_container_runs_or_after_the_store_has_it(
    server: ServeProcess, moment: str
) -> None:
    known = set()
    for _ in range(2):
        known |= _interrupted_create(server, moment)
        assert_reconciled(server, known)


def test_a_create_killed_once_its_container_runs(server: ServeProcess) -> None:
    known = set()
    try:
        for _ in range(2):
            known |= _interrupted_create(server, "once its container runs")
            assert_reconciled(server, known)
    finally:
        _start_clean(server)


def test_a_container_without_a_live_row_is_stopped_at_start(server: ServeProcess) -> None:
    """The store says killed (what a kill cut off between the store's write and the
    node's teardown leaves) while the container runs on: the next start stops it."""
    sandbox = _create()
    server.kill()
    with contextlib.closing(sqlite3.connect(server.database)) as db, db:
        db.execute(
            "UPDATE sandboxes SET state = 'killed' WHERE sandbox_id = ?", (sandbox.sandbox_id,)
        )
    server.start()
    try:
        assert host_sandboxes(server.node_dir) == {}
    finally:
        _start_clean(server)


def _start_clean(server: ServeProcess) -> None:
    """Stop the server, remove every sandbox of its node (so a failure above leaves the
    next test a clean host), and start it again: it forgets the rows of those now gone."""
    assert server.stop() == 0
    sweep(server.node_dir)
    server.start()
    assert disagreements(server) == []


# --- pause and resume ------------------------------------------------------------------


def _paused_on_host(server: ServeProcess, mode: str, sandbox_id: str) -> Callable[[], bool]:
    if mode == "full":
        return lambda: _frozen(sandbox_id)
    return lambda: not _container(server, sandbox_id)


def _resumed_on_host(server: ServeProcess, mode: str, sandbox_id: str) -> Callable[[], bool]:
    if mode == "full":
        return lambda: not _frozen(sandbox_id)
    return lambda: _container(server, sandbox_id)


@pytest.mark.parametrize("moment", [AT_ONCE, "once the host has paused it"])
@pytest.mark.parametrize("mode", ["full", "filesystem"])
def test_a_pause_killed_midway(server: ServeProcess, mode: str, moment: str) -> None:
    sandbox = _create()
    paused = _paused_on_host(server, mode, sandbox.sandbox_id)
    interrupt(
        server,
        "pause",
        lambda: sandbox.pause(mode=mode, request_timeout=REQUEST_TIMEOUT),
        (lambda: True) if moment == AT_ONCE else paused,
    )
    assert_reconciled(server, {sandbox.sandbox_id})
    Sandbox.kill(sandbox.sandbox_id, request_timeout=REQUEST_TIMEOUT)


@pytest.mark.parametrize("moment", [AT_ONCE, "once the host has resumed it"])
@pytest.mark.parametrize("mode", ["full", "filesystem"])
def test_a_resume_killed_midway(server: ServeProcess, mode: str, moment: str) -> None:
    sandbox = _create()
    sandbox_id = sandbox.sandbox_id
    sandbox.commands.run("echo kept > /home/user/kept", timeout=REQUEST_TIMEOUT)
    assert sandbox.pause(mode=mode, request_timeout=REQUEST_TIMEOUT)
    resumed = _resumed_on_host(server, mode, sandbox_id)
    interrupt(
        server,
        "resume",
        lambda: Sandbox.connect(sandbox_id, timeout=300, request_timeout=REQUEST_TIMEOUT),
        (lambda: True) if moment == AT_ONCE else resumed,
    )
    assert_reconciled(server, {sandbox_id})
    again = Sandbox.connect(sandbox_id, request_timeout=REQUEST_TIMEOUT)
    assert again.files.read("/home/user/kept", request_timeout=REQUEST_TIMEOUT) == "kept\n"
    again.kill(request_timeout=REQUEST_TIMEOUT)


# --- a template build --------------------------------------------------------------------

BUILT = "sleep 2 && echo built > /home/user/built"


def _template() -> Template:
    return Template().from_template("base").run_cmd(BUILT)


@pytest.fixture(scope="module")
def alias() -> str:
    return f"chaos-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("moment", ["once its build sandbox runs", "during its RUN step"])
def test_a_template_build_killed_midway(server: ServeProcess, alias: str, moment: str) -> None:
    before, builds = _dirs(server), set(build_states(server.database))
    step = threading.Event()

    def log(entry: object) -> None:
        if "RUN sleep" in getattr(entry, "message", ""):
            step.set()

    evidence = {
        "once its build sandbox runs": lambda: _launched(_new_dir(server, before)),
        "during its RUN step": step.is_set,
    }[moment]
    outcome = interrupt(
        server,
        "template build",
        lambda: Template.build(_template(), alias, skip_cache=True, on_build_logs=log),
        evidence,
    )
    assert outcome.raised is not None, "the build ended before the server was killed"
    new = {b: s for b, s in build_states(server.database).items() if b not in builds}
    assert list(new.values()) == ["error"], new  # failed at the restart, not left building
    assert_reconciled(server, set())


def test_the_template_builds_after_the_cut_off_builds(server: ServeProcess, alias: str) -> None:
    Template.build(_template(), alias, skip_cache=True)
    sandbox = Sandbox.create(alias, timeout=300, request_timeout=REQUEST_TIMEOUT)
    assert sandbox.commands.run("cat /home/user/built").stdout == "built\n"
    sandbox.kill()


# --- a file upload -----------------------------------------------------------------------


@pytest.mark.parametrize("moment", [AT_ONCE, "once part of it is written"])
def test_an_upload_killed_midway(server: ServeProcess, moment: str) -> None:
    data = os.urandom(UPLOAD_CHUNK * UPLOAD_CHUNKS)
    path = "/home/user/upload.bin"
    sandbox = _create()
    on_disk = upper_layer(server.node_dir, sandbox.sandbox_id) / path.lstrip("/")

    def chunks() -> Iterator[bytes]:
        for i in range(UPLOAD_CHUNKS):
            yield data[i * UPLOAD_CHUNK : (i + 1) * UPLOAD_CHUNK]
            time.sleep(0.02)  # a slow client: the kill lands inside the upload

    def written() -> bool:
        with contextlib.suppress(OSError):
            return on_disk.stat().st_size >= 4 * UPLOAD_CHUNK
        return False

    outcome = interrupt(
        server,
        "upload",
        lambda: sandbox.files.write(path, chunks(), request_timeout=REQUEST_TIMEOUT),
        (lambda: True) if moment == AT_ONCE else written,
    )
    assert outcome.raised is not None, "the upload ended before the server was killed"
    assert_reconciled(server, {sandbox.sandbox_id})
    again = Sandbox.connect(sandbox.sandbox_id, request_timeout=REQUEST_TIMEOUT)
    # What envd wrote of it is a prefix of what was sent (envd writes in place, as E2B's
    # does), and the sandbox takes the whole file now.
    if again.files.exists(path, request_timeout=REQUEST_TIMEOUT):
        kept = again.files.read(path, format="bytes", request_timeout=REQUEST_TIMEOUT)
        assert data.startswith(bytes(kept))
    again.files.write(path, data, request_timeout=REQUEST_TIMEOUT)
    assert again.files.read(path, format="bytes", request_timeout=REQUEST_TIMEOUT) == data
    again.kill(request_timeout=REQUEST_TIMEOUT)


# --- in the end ------------------------------------------------------------------------


def test_after_the_faults_nothing_is_left(server: ServeProcess) -> None:
    kill_all()
    assert live_rows(server.database) == {}
    assert server.stop() == 0, server.log_tail()
    found = new_leaks(server)
    kinds = ", ".join(f"{kind} {n} ({flying} in flight)" for kind, (n, flying) in FAULTS.items())
    fired = sum(n for n, _ in FAULTS.values())
    print(
        f"\nchaos: {fired} kill -9 faults: {kinds}; reconciled after {len(RECONCILED)};"
        f" leaks found: {found or 0}"
    )
    assert found == {}
