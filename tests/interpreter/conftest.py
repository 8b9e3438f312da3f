"""A real `hearth serve --runtime container` for the code-interpreter tests, with the
released `e2b-code-interpreter` SDK pointed at it (recipe A).

The server runs in a thread of this process (`tests/api/conftest.serve_containers`) on a
random loopback port with its own data directory; sandboxes of `code-interpreter-v1`
run Hearth's interpreter server on port 49999, reached through the gateway exactly as
the SDK reaches E2B. Container sandboxes outlive the server, so every sandbox a test
leaves is killed before the server stops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from api.conftest import Hearth, serve_containers

TEMPLATE = "code-interpreter-v1"


@pytest.fixture(scope="session")
def hearth() -> Iterator[Hearth]:
    if os.geteuid() != 0:
        pytest.skip("needs root: container sandboxes")
    data = Path(tempfile.mkdtemp(prefix="hearth-interpreter-", dir="/var/tmp"))
    data.chmod(0o755)  # the runtime's unprivileged ids search every parent
    server, info = serve_containers(data)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in info.env().items():
                patch.setenv(name, value)
            patch.delenv("E2B_DEBUG", raising=False)
            yield info
            _kill_all(info)
    finally:
        assert server.stop(), "hearth serve did not stop"
        shutil.rmtree(data, ignore_errors=True)


def _kill_all(info: Hearth) -> None:
    from e2b import Sandbox

    for sandbox in Sandbox.list(limit=100).next_items():
        Sandbox.kill(sandbox.sandbox_id)
