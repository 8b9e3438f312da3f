"""A sandbox's streams through the gateway end when the sandbox goes, as E2B's proxy
ends them (infra `proxy/stream_abort.go`, spec §1.5 rule 4, §6.2).

The upstream here is a raw server standing in for envd: it writes a Connect stream's
envelopes and then hangs, or breaks off. A sandbox is killed by taking it out of the
directory, which is all the gateway learns of a kill; the upstream never closes by
itself, as a killed microVM or a frozen container does not.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from hearth.node.interface import SandboxAddress
from hearth.proxy import Gateway, listen

from .directory import Directory, Route

SANDBOX = "sbxstreams"
CONNECT = b"application/connect+json"


def _envelope(message: dict, flags: int = 0) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">BI", flags, len(body)) + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


FIRST = _envelope({"event": {"start": {"pid": 7}}})


async def _envd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """`/hang`: a Connect stream's first envelope, then nothing until the gateway goes;
    `/cut`: the first envelope, then the connection closes; `/cut-inside`: half of it;
    `/plain`: a body that is no Connect stream, then nothing; `/ws`: an upgrade, then
    nothing; anything else: 204, as envd's /health."""
    head = await reader.readuntil(b"\r\n\r\n")
    path = head.split(b" ", 2)[1]
    if path == b"/ws":
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n")
        writer.write(b"\r\n")
        writer.write(b"hello\n")
    elif path in (b"/hang", b"/cut", b"/cut-inside", b"/plain"):
        kind = b"text/plain" if path == b"/plain" else CONNECT
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(_chunk(FIRST[:9] if path == b"/cut-inside" else FIRST))
        if path.startswith(b"/cut"):
            await writer.drain()
            writer.close()
            return
    else:
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    await writer.drain()
    await reader.read()  # until the gateway closes or aborts this connection
    writer.close()


@dataclass
class Env:
    url: str
    directory: Directory
    route: Route


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    server = await asyncio.start_server(_envd, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    route = Route(SandboxAddress("127.0.0.1", {49983: port}))
    directory = Directory({SANDBOX: route})
    gateway = Gateway(directory)
    front = await asyncio.start_server(gateway.handle, sock=listen("127.0.0.1", 0))
    try:
        yield Env(f"http://127.0.0.1:{front.sockets[0].getsockname()[1]}", directory, route)
    finally:
        front.close()
        await gateway.aclose()
        server.close()


HEADERS = {"E2b-Sandbox-Id": SANDBOX, "E2b-Sandbox-Port": "49983", "Content-Type": CONNECT}


async def _read_stream(env: Env, path: str, *, kill: bool) -> bytes:
    """The body of `path`'s stream; with `kill`, the sandbox is taken out of the
    directory once its first envelope has arrived."""
    async with (
        httpx.AsyncClient(base_url=env.url) as client,
        client.stream("POST", path, headers=HEADERS, content=b"{}") as response,
    ):
        assert response.status_code == 200
        received = b""
        async for chunk in response.aiter_raw():
            received += chunk
            if kill and received == FIRST:
                del env.directory.routes[SANDBOX]
        return received


def _ended_unavailable(body: bytes) -> None:
    assert body.startswith(FIRST)
    rest = body[len(FIRST) :]
    flags, size = struct.unpack(">BI", rest[:5])
    assert flags == 0b10 and size == len(rest) - 5
    assert json.loads(rest[5:]) == {
        "error": {
            "code": "unavailable",
            "message": f"the connection to sandbox {SANDBOX} ended before the stream completed",
        }
    }


async def test_a_killed_sandboxs_stream_ends_unavailable(env: Env) -> None:
    _ended_unavailable(await _read_stream(env, "/hang", kill=True))
    # What the SDK asks next: the sandbox's /health, answered as E2B's proxy answers.
    async with httpx.AsyncClient(base_url=env.url) as client:
        health = await client.get("/health", headers=HEADERS)
    assert health.status_code == 502
    assert health.headers["content-type"] == "application/json; charset=utf-8"
    assert health.json() == {
        "sandboxId": SANDBOX,
        "message": "The sandbox was not found",
        "code": 502,
    }


async def test_a_stream_broken_off_between_envelopes_ends_unavailable(env: Env) -> None:
    _ended_unavailable(await _read_stream(env, "/cut", kill=False))


async def test_a_stream_broken_off_inside_an_envelope_breaks(env: Env) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await _read_stream(env, "/cut-inside", kill=False)


async def test_other_bodies_of_a_killed_sandbox_break(env: Env) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await _read_stream(env, "/plain", kill=True)


async def test_a_running_sandboxs_streams_go_on(env: Env) -> None:
    async with (
        httpx.AsyncClient(base_url=env.url) as client,
        client.stream("POST", "/hang", headers=HEADERS) as response,
    ):
        chunks = response.aiter_raw()
        assert await anext(chunks) == FIRST
        # The gateway looks at the held stream's sandbox meanwhile, and leaves it be.
        await asyncio.sleep(0.6)  # over two of its looks; nothing is timed
        async with httpx.AsyncClient(base_url=env.url) as other:
            assert (await other.get("/health", headers=HEADERS)).status_code == 204
        # Now it runs elsewhere (resumed at another address): the old stream ends.
        env.directory.routes[SANDBOX] = Route(SandboxAddress("127.0.0.2", {}))
        _ended_unavailable(FIRST + b"".join([c async for c in chunks]))


async def test_an_upgraded_connection_of_a_killed_sandbox_closes(env: Env) -> None:
    port = int(env.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: " + SANDBOX.encode() + b"\r\n"
        b"E2b-Sandbox-Port: 49983\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"
    )
    received = b""
    while b"hello\n" not in received:
        received += await reader.read(65536)
    del env.directory.routes[SANDBOX]
    try:
        rest = await reader.read()  # the gateway closes it; the client sent no EOF
    except ConnectionResetError:
        rest = b""
    assert rest == b""
    writer.close()
