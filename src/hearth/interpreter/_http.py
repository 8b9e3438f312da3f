"""A minimal asyncio HTTP/1.1 server: keep-alive, Content-Length and chunked bodies in,
plain and chunked (streamed) responses out, and notice of a client that went away.

The interpreter server runs on the template's own python3, where only the standard
library and Jupyter's packages can be assumed, and it answers a handful of JSON routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           422: "Unprocessable Entity", 500: "Internal Server Error",
           503: "Service Unavailable"}  # fmt: skip


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    # Set once the client has closed its side of the connection.
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> object:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    # A streamed body: each chunk is written as it comes (chunked transfer encoding).
    stream: AsyncIterator[bytes] | None = None

    @classmethod
    def json(cls, value: object, status: int = 200) -> Response:
        return cls(status, json.dumps(value).encode())

    @classmethod
    def text(cls, text: str, status: int) -> Response:
        return cls(status, text.encode(), "text/plain; charset=utf-8")


Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    pass


async def serve_connection(
    handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer requests on one connection until either side closes it."""
    try:
        while True:
            try:
                request = await _read_request(reader)
            except (BadRequest, asyncio.LimitOverrunError, ValueError) as e:
                await _write(writer, Response.text(f"bad request: {e}", 400), close=True)
                return
            if request is None:
                return
            response = await handler(request)
            keep = request.headers.get("connection", "").lower() != "close"
            if response.stream is None:
                await _write(writer, response, close=not keep)
            elif not await _stream(reader, writer, request, response):
                return
            if not keep:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise BadRequest("incomplete request head") from None
        return None
    if len(head) > MAX_HEAD:
        raise BadRequest("request head too large")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _ = lines[0].split(" ", 2)
    except ValueError:
        raise BadRequest("malformed request line") from None
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length") or 0))
    return Request(method.upper(), target.split("?", 1)[0], headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _head(response: Response, extra: list[str]) -> bytes:
    lines = [f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}"]
    lines.append(f"Content-Type: {response.content_type}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _write(writer: asyncio.StreamWriter, response: Response, close: bool) -> None:
    extra = [f"Content-Length: {len(response.body)}"]
    if close:
        extra.append("Connection: close")
    writer.write(_head(response, extra) + response.body)
    await writer.drain()


async def _stream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request: Request,
    response: Response,
) -> bool:
    """Write a streamed body; False if the client went away before its end.

    The client sends nothing while it reads a response, so a read that ends is the
    client closing the connection: the producer is cancelled at once rather than at its
    next write, which lets the execution behind it be interrupted promptly.
    """
    stream = response.stream
    assert stream is not None
    writer.write(_head(response, ["Transfer-Encoding: chunked"]))

    async def produce() -> None:
        async for chunk in stream:
            if chunk:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    producer = asyncio.ensure_future(produce())
    watcher = asyncio.ensure_future(reader.read(1))
    try:
        await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if producer.done():
            producer.result()
            return True
        # The client closed (or, against the protocol, sent more): end this exchange.
        request.disconnected.set()
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await producer
        return False
    except ConnectionError:
        request.disconnected.set()
        return False
    finally:
        watcher.cancel()
        with contextlib.suppress(BaseException):
            await watcher
        # Close the generator here, in this task, so its cleanup (an interrupt) runs now.
        aclose = getattr(response.stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
