"""Churn through the released `e2b` SDK against a container-runtime `hearth serve` (issue
15): 1,000 create → `commands.run("echo ...")` → kill cycles of `base`, four at a time.

Afterwards nothing of any sandbox is left: no process, network namespace, veth, nft
element, mount (in any namespace), loop device, cgroup, sandbox directory or runtime
state (`leaks()`), no live row in the store and nothing in the SDK's list; and the
server's memory (PSS, its share of shared pages counted) is within 10% of what it was
after a warm-up of 50 cycles (the first cycles import and cache what the rest reuse).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2b import Sandbox

from .conftest import ServeProcess, live_rows, new_leaks, sandbox_ids, served

pytestmark = [pytest.mark.root, pytest.mark.long]

CYCLES = 1000
WARM_UP = 50
WORKERS = 4
REQUEST_TIMEOUT = 120  # a hang fails the test; no speed is asserted
MEMORY_GROWTH = 0.10


@pytest.fixture
def server() -> Iterator[ServeProcess]:
    with served("hearth-churn-") as server:
        yield server


def _cycle(n: int) -> float:
    """One create → run → kill; its seconds."""
    started = time.monotonic()
    sandbox = Sandbox.create("base", timeout=300, request_timeout=REQUEST_TIMEOUT)
    try:
        token = f"cycle-{n}-{uuid.uuid4().hex[:8]}"
        out = sandbox.commands.run(f"echo {token}", timeout=REQUEST_TIMEOUT)
        assert (out.stdout, out.exit_code) == (f"{token}\n", 0), out
    finally:
        assert sandbox.kill(request_timeout=REQUEST_TIMEOUT) is True
    return time.monotonic() - started


def _cycles(count: int) -> tuple[list[float], list[str]]:
    """`count` cycles on WORKERS threads: their seconds, and the errors of failed ones."""
    seconds: list[float] = []
    errors: list[str] = []

    def one(n: int) -> None:
        try:
            seconds.append(_cycle(n))
        except Exception as e:  # noqa: BLE001 - all are reported together
            errors.append(repr(e)[:300])

    with ThreadPoolExecutor(WORKERS) as threads:
        list(threads.map(one, range(count)))
    return seconds, errors


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_thousand_create_run_kill_cycles(server: ServeProcess) -> None:
    _, errors = _cycles(WARM_UP)
    assert errors == [], errors
    before, fds_before = server.pss_kib(), _fds(server.pid)

    started = time.monotonic()
    seconds, errors = _cycles(CYCLES)
    elapsed = time.monotonic() - started

    listed, rows = sandbox_ids(), live_rows(server.database)
    found = new_leaks(server)
    after, fds_after = server.pss_kib(), _fds(server.pid)
    quantiles = statistics.quantiles(seconds, n=20) if len(seconds) > 1 else [0.0] * 19
    print(
        f"\nchurn: {len(seconds)} of {CYCLES} cycles in {elapsed:.1f} s ({WORKERS} workers),"
        f" cycle p50 {quantiles[9]:.3f} s p95 {quantiles[18]:.3f} s;"
        f" hearth serve PSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB"
        f" ({(after - before) / before:+.1%}), fds {fds_before} -> {fds_after};"
        f" leaks found: {found or 0}; listed {len(listed)}, live rows {len(rows)}"
    )
    assert errors == [], f"{len(errors)} cycles failed, e.g. {errors[:5]}"
    assert found == {}
    assert listed == [] and rows == {}
    assert after <= before * (1 + MEMORY_GROWTH), (before, after)
