"""A real `hearth serve --runtime container` for the code-interpreter tests, with the
released `e2b-code-interpreter` SDK pointed at it (recipe A).

The server runs in a thread of this process (`tests/api/conftest.serve_containers`) on a
random loopback port with its own data directory; sandboxes of `code-interpreter-v1`
run Hearth's interpreter server on port 49999, reached through the gateway exactly as
the SDK reaches E2B. Container sandboxes outlive the server, so every sandbox a test
leaves is killed before the server stops.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api.conftest import Hearth, served_containers
from e2b_code_interpreter import Sandbox

TEMPLATE = "code-interpreter-v1"


@pytest.fixture(scope="session")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-interpreter-") as info:
        yield info


@pytest.fixture(scope="module")
def sbx(hearth: Hearth) -> Iterator[Sandbox]:
    """One sandbox for a module's tests, with a sandbox env var (`SANDBOX_VAR`)."""
    sandbox = Sandbox.create(timeout=600, envs={"SANDBOX_VAR": "from create"})
    try:
        yield sandbox
    finally:
        sandbox.kill()
