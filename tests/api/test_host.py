"""`sandbox.get_host(port)` names a host the proxy routes to that port of the sandbox.

The SDK builds `{port}-{id}.{E2B_DOMAIN}`; with DNS for the domain (or curl and browsers,
which resolve `*.localhost` themselves) it reaches the proxy. Here the request goes to
the proxy's address with that Host header, which is what such a client sends.
"""

from __future__ import annotations

import random
import time

import httpx
import pytest
from e2b import Sandbox

from .conftest import Hearth, serve_containers

pytestmark = pytest.mark.root


@pytest.fixture
def hearth(container_data_dir, monkeypatch):
    """A container-runtime server: each sandbox has its own network, so every port of
    it is reachable through the proxy (the isolated runtime shares the host's loopback
    and publishes only envd's port, or the proxy would expose the host's services)."""
    server, info = serve_containers(container_data_dir)
    for name, value in info.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    try:
        yield info
    finally:
        assert server.stop(), "hearth serve did not stop"


def _get(hearth: Hearth, host: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{hearth.port}/", headers={"Host": host}, timeout=30)


def test_get_host_reaches_a_server_in_the_sandbox(hearth: Hearth):
    sbx = Sandbox.create(timeout=120)
    try:
        port = random.randrange(20000, 30000)
        sbx.files.write("site/index.html", "hello from the sandbox")
        sbx.commands.run(
            f"cd ~/site && python3 -m http.server {port}",
            background=True,
            timeout=0,
        )
        host = sbx.get_host(port)
        assert host == f"{port}-{sbx.sandbox_id}.{hearth.domain}"
        for _ in range(100):  # until the server listens; bounded, no timing asserted
            response = _get(hearth, host)
            if response.status_code == 200:
                break
            time.sleep(0.1)
        assert response.status_code == 200
        assert response.text == "hello from the sandbox"
    finally:
        sbx.kill()
    gone = _get(hearth, host)
    assert gone.status_code == 502
    assert "was not found" in gone.json()["message"]


def test_get_host_of_a_closed_port_says_so(hearth: Hearth):
    sbx = Sandbox.create(timeout=60)
    try:
        response = _get(hearth, sbx.get_host(random.randrange(30000, 40000)))
        assert response.status_code == 502
        body = response.json()
        assert "port is not open" in body["message"]
        assert body["sandboxId"] == sbx.sandbox_id
    finally:
        sbx.kill()
