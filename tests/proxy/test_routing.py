"""Where the gateway sends what older SDKs send (spec §1.5): control-plane calls that
carry a sandbox's routing headers, and envd calls that carry only its access token."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from hearth.node.interface import SandboxAddress
from hearth.proxy import Gateway, listen
from hearth.proxy._routing import ToApi, ToSandbox, Unnamed, classify

from .directory import Directory, Route

SANDBOX = "sbxrouting"
TOKEN = "envd-token"
ROUTED = {b"e2b-sandbox-id": SANDBOX.encode(), b"e2b-sandbox-port": b"49983"}


def test_the_control_planes_sandbox_paths_go_to_the_api_with_routing_headers() -> None:
    # e2b 2.7 to 2.26 (Python) connect so.
    for target in (b"/sandboxes/x/connect", b"/v2/sandboxes/x/connect", b"/sandboxes"):
        assert classify(ROUTED, target, domains=(), api=True) == ToApi()
    # Only on envd's port and only where the API is served; envd's own paths stay.
    user_port = {**ROUTED, b"e2b-sandbox-port": b"8080"}
    assert classify(user_port, b"/sandboxes/x", domains=(), api=True) == ToSandbox(SANDBOX, 8080)
    assert classify(ROUTED, b"/sandboxes/x", domains=(), api=False) == ToSandbox(SANDBOX, 49983)
    for target in (b"/files?path=a", b"/health", b"/process.Process/Start", b"/sandboxesx"):
        assert classify(ROUTED, target, domains=(), api=True) == ToSandbox(SANDBOX, 49983)


def test_what_names_no_sandbox() -> None:
    for host in (b"127.0.0.1:3000", b"api.example.test"):
        headers = {b"host": host}
        assert classify(headers, b"/files", domains=("example.test",), api=True) == Unnamed()
    assert classify({b"host": b"nodots"}, b"/", domains=(), api=False) == Unnamed()


async def _answer(tag: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    """Answers every request with `tag` and the request line."""
    while head := await reader.readuntil(b"\r\n\r\n"):
        body = tag + b" " + head.split(b"\r\n", 1)[0]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


@dataclass
class Env:
    url: str
    proxy_url: str
    directory: Directory


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    envd = await asyncio.start_server(lambda r, w: _answer(b"envd", r, w), "127.0.0.1", 0)
    api_name = f"\0hearth-test-routing-{id(envd)}"
    api_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    api_sock.bind(api_name)
    api = await asyncio.start_unix_server(lambda r, w: _answer(b"api", r, w), sock=api_sock)
    port = envd.sockets[0].getsockname()[1]
    address = SandboxAddress("127.0.0.1", {49983: port})
    directory = Directory({SANDBOX: Route(address, envd_access_token=TOKEN)})
    gateways = [Gateway(directory, api_socket=api_name), Gateway(directory)]
    fronts = [await asyncio.start_server(g.handle, sock=listen("127.0.0.1", 0)) for g in gateways]
    url, proxy_url = (f"http://127.0.0.1:{f.sockets[0].getsockname()[1]}" for f in fronts)
    try:
        yield Env(url, proxy_url, directory)
    finally:
        for server in (*fronts, envd, api):
            server.close()
        for gateway in gateways:
            await gateway.aclose()


async def test_an_envd_call_named_only_by_its_token(env: Env) -> None:
    # e2b 2.8 to 2.13 (npm) send envd's HTTP calls so, to E2B_SANDBOX_URL.
    token = {"X-Access-Token": TOKEN}
    for url in (env.url, env.proxy_url):
        async with httpx.AsyncClient(base_url=url) as client:
            files = await client.post("/files?path=a", headers=token)
            assert files.text == "envd POST /files?path=a HTTP/1.1"
            assert (await client.get("/health", headers=token)).text.startswith("envd")
    async with httpx.AsyncClient(base_url=env.url) as client:
        # Not envd's path, or no token: the API's.
        assert (await client.get("/sandboxes", headers=token)).text.startswith("api")
        assert (await client.get("/health")).text == "api GET /health HTTP/1.1"
        # A token no running sandbox has: a sandbox that is not found (paused, killed).
        gone = await client.get("/health", headers={"X-Access-Token": "other"})
        assert gone.status_code == 502
        assert gone.json() == {"sandboxId": "", "message": "The sandbox was not found", "code": 502}


async def test_routing_headers_on_the_api_port_reach_the_api(env: Env) -> None:
    headers = {"E2b-Sandbox-Id": SANDBOX, "E2b-Sandbox-Port": "49983"}
    async with httpx.AsyncClient(base_url=env.url) as client:
        connect = await client.post(f"/sandboxes/{SANDBOX}/connect", headers=headers)
        assert connect.text == f"api POST /sandboxes/{SANDBOX}/connect HTTP/1.1"
        envd = await client.post("/process.Process/Start", headers=headers)
        assert envd.text.startswith("envd")
