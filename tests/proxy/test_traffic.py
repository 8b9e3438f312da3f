"""What the gateway tallies of sandbox traffic (`/metrics` reads it): requests relayed,
every byte to and from the sandbox, plain exchanges and upgraded connections alike, and
the answers it gives itself.

The upstream stands in for a sandbox and counts what it reads and writes; the gateway's
tally must say the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from hearth.node.interface import SandboxAddress
from hearth.proxy import Gateway, Traffic, listen

from .directory import Directory, Route

SANDBOX = "sbxtraffic"
HEADERS = {"E2b-Sandbox-Id": SANDBOX, "E2b-Sandbox-Port": "49983"}


@dataclass
class Upstream:
    """An HTTP server that answers `/ws` with an upgrade and then echoes, and anything
    else with a small body; `read` and `written` are its byte counts."""

    read: int = 0
    written: int = 0
    done: list[asyncio.Task[None]] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.read += len(head)
                length = _content_length(head)
                if length:
                    self.read += len(await reader.readexactly(length))
                if head.split(b" ", 2)[1] == b"/ws":
                    self._write(writer, b"HTTP/1.1 101 Switching Protocols\r\n")
                    self._write(writer, b"Upgrade: x\r\nConnection: Upgrade\r\n\r\n")
                    while data := await reader.read(65536):
                        self.read += len(data)
                        self._write(writer, data)
                        await writer.drain()
                    break
                self._write(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        self.written += len(data)
        writer.write(data)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@dataclass
class Env:
    url: str
    port: int
    upstream: Upstream
    traffic: Traffic


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    upstream = Upstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    directory = Directory({SANDBOX: Route(SandboxAddress("127.0.0.1", {49983: port}))})
    traffic = Traffic()
    gateway = Gateway(directory, traffic=traffic)
    front = await asyncio.start_server(gateway.handle, sock=listen("127.0.0.1", 0))
    front_port = front.sockets[0].getsockname()[1]
    try:
        yield Env(f"http://127.0.0.1:{front_port}", front_port, upstream, traffic)
    finally:
        front.close()
        await gateway.aclose()
        server.close()


async def _tallied(env: Env) -> None:
    """Until the gateway's tally has caught up with the upstream's counts (it counts a
    chunk as it relays it; bounded by tries)."""
    for _ in range(500):
        bytes_ = env.traffic.sandbox_bytes
        if (bytes_.written, bytes_.read) == (env.upstream.read, env.upstream.written):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{env.traffic} vs upstream {env.upstream}")


async def test_exchanges_are_tallied_to_the_byte(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.url) as client:
        for _ in range(3):
            response = await client.post("/files", headers=HEADERS, content=b"x" * 100_000)
            assert response.content == b"hello"
    await _tallied(env)
    assert env.traffic.requests == 3
    assert env.traffic.sandbox_bytes.written > 300_000


async def test_an_upgraded_connection_is_tallied_to_the_byte(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: " + SANDBOX.encode() + b"\r\n"
        b"E2b-Sandbox-Port: 49983\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"
    )
    received = await reader.readuntil(b"\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 101")
    for _ in range(5):
        writer.write(b"ping" * 1000)
        await writer.drain()
        echoed = await reader.readexactly(4000)
        assert echoed == b"ping" * 1000
    writer.close()
    await _tallied(env)
    assert env.traffic.requests == 1
    assert env.traffic.sandbox_bytes.read > 20_000


async def test_the_gateways_own_answers_are_tallied_by_status(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.url) as client:
        gone = {"E2b-Sandbox-Id": "nosuchsandbox", "E2b-Sandbox-Port": "49983"}
        assert (await client.get("/health", headers=gone)).status_code == 502
        assert (await client.get("/health", headers=gone)).status_code == 502
    assert env.traffic.refusals == {502: 2}
    assert env.traffic.requests == 0
    assert env.traffic.sandbox_bytes.read == env.traffic.sandbox_bytes.written == 0
