"""Load through the released `e2b` SDK against a container-runtime `hearth serve` (issue
15): 100 creates at once, then 500 `commands.run` at once across 50 of the sandboxes.

Every create succeeds or is refused with E2B's 429 (the team's concurrency limit), and
every command succeeds (or is a 429): no 5xx and no other error. The SDK's retries are
off, so each outcome is the server's own answer, and its request timeout is long: the
test is about answers under load, not their speed. Afterwards everything is killed and
nothing is left on the host or in the store.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import httpx
import pytest
from e2b import RateLimitException, Sandbox

from .conftest import ServeProcess, live_rows, new_leaks, sandbox_ids, served

pytestmark = [pytest.mark.root, pytest.mark.long]

CREATES = 100
SANDBOXES = 50  # that the commands go to
COMMANDS = 500
REQUEST_TIMEOUT = 600  # answers, however slow, are what count here; a hang still fails
LIMIT_MESSAGE = "maximum number of concurrent E2B sandboxes"
T = TypeVar("T")


@pytest.fixture
def server() -> Iterator[ServeProcess]:
    with served("hearth-load-") as server:
        yield server


def _outcome(error: BaseException) -> str:
    """How an SDK call failed: "429" (with E2B's message), "5xx", or what else it was."""
    if isinstance(error, RateLimitException) and LIMIT_MESSAGE in str(error):
        return "429"
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and status >= 500:
        return "5xx"
    return f"other: {error!r}"[:300]


def _at_once(count: int, call: Callable[[int], T]) -> list[T | BaseException]:
    """`call(i)` for every i in `count` threads released together; results or errors."""
    start = threading.Barrier(count)

    def one(i: int) -> T | BaseException:
        start.wait()
        try:
            return call(i)
        except Exception as e:  # noqa: BLE001 - counted by the test
            return e

    with ThreadPoolExecutor(count) as threads:
        return list(threads.map(one, range(count)))


def _tally(results: list) -> collections.Counter[str]:
    return collections.Counter(
        _outcome(r) if isinstance(r, BaseException) else "ok" for r in results
    )


def test_concurrent_creates_and_commands(server: ServeProcess) -> None:
    started = time.monotonic()
    created = _at_once(
        CREATES,
        lambda i: Sandbox.create(
            "base",
            timeout=900,
            metadata={"load": str(i)},
            request_timeout=REQUEST_TIMEOUT,
            retries=0,
        ),
    )
    creates = _tally(created)
    sandboxes = [s for s in created if isinstance(s, Sandbox)]
    create_seconds = time.monotonic() - started
    assert set(creates) <= {"ok", "429"}, creates
    assert len(sandboxes) >= SANDBOXES, creates

    # Past the team's limit a create is E2B's 429, with its error body.
    limit_body = _create_past_the_limit(server)
    assert limit_body["code"] == 429 and LIMIT_MESSAGE in limit_body["message"], limit_body

    started = time.monotonic()
    targets = sandboxes[:SANDBOXES]

    def run(i: int) -> str:
        out = targets[i % SANDBOXES].commands.run(f"echo run-{i}", timeout=REQUEST_TIMEOUT)
        assert out.stdout == f"run-{i}\n" and out.exit_code == 0, out
        return out.stdout

    commands = _tally(_at_once(COMMANDS, run))
    command_seconds = time.monotonic() - started
    assert set(commands) <= {"ok", "429"}, commands
    assert commands["ok"] >= 1, commands

    with ThreadPoolExecutor(8) as threads:
        killed = list(threads.map(lambda s: Sandbox.kill(s.sandbox_id), sandboxes))
    assert all(killed)
    for sandbox_id in sandbox_ids():  # the ones made past the limit
        Sandbox.kill(sandbox_id)
    found = new_leaks(server)
    print(
        f"\nload: {CREATES} creates at once in {create_seconds:.1f} s: {dict(creates)};"
        f" past the limit: {limit_body['code']}; {COMMANDS} commands at once on {SANDBOXES}"
        f" sandboxes in {command_seconds:.1f} s: {dict(commands)}; leaks found: {found or 0}"
    )
    assert sandbox_ids() == [] and live_rows(server.database) == {}
    assert found == {}


def _create_past_the_limit(server: ServeProcess) -> dict:
    """Create (with the REST API, to see the body) until the team's limit refuses one;
    that refusal's body. Bounded by the limit itself."""
    assert server.hearth is not None
    with httpx.Client(
        base_url=server.hearth.api_url, headers={"X-API-Key": server.api_key}, timeout=120
    ) as api:
        for _ in range(CREATES + 1):
            answer = api.post("/sandboxes", json={"templateID": "base", "timeout": 900})
            if answer.status_code != 201:
                break
        assert answer.status_code == 429, answer.text
        assert answer.headers["content-type"].startswith("application/json")
        # And the SDK says so as E2B's does.
        with pytest.raises(RateLimitException, match=LIMIT_MESSAGE):
            Sandbox.create("base", request_timeout=120, retries=0)
        return answer.json()
