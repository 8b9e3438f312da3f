"""A small HTTP/1.1 layer on blocking sockets: requests in, responses out.

envd runs in every sandbox, so it is built on the standard library alone: this module
and `threading` cost a few milliseconds to import, where asyncio with an HTTP server
stack costs hundreds and twice the memory. It does what envd needs and no more:
keep-alive, Content-Length and chunked bodies both ways, streaming in both directions.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, TypeGuard
from urllib.parse import parse_qs, unquote, urlsplit

MAX_HEADER_BYTES = 64 * 1024
REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    416: "Range Not Satisfiable",
    429: "Too Many Requests",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}


class BadRequest(Exception):
    pass


class Connection:
    """A buffered reader over one client socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.closed = False

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(256 * 1024)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.buf += data
        return True

    def read_until(self, sep: bytes, limit: int) -> bytes | None:
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise BadRequest("header too large")
            start = max(0, len(self.buf) - len(sep) + 1)
            if not self._fill():
                return None

    def read_some(self, n: int) -> bytes:
        """Up to n bytes; b"" only at end of stream."""
        if not self.buf and not self._fill():
            return b""
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise BadRequest("unexpected end of body")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


class Body:
    """The request body, read incrementally; de-chunks Transfer-Encoding: chunked."""

    def __init__(
        self, conn: Connection, length: int | None, chunked: bool, expect_continue: bool = False
    ) -> None:
        self.conn = conn
        self.remaining = length or 0
        self.chunked = chunked
        self.chunk_left = 0
        self.done = not chunked and not self.remaining
        # A client that sent `Expect: 100-continue` waits for this before its body;
        # it is sent only when the handler reads, so a rejection costs no upload.
        self.expect_continue = expect_continue and not self.done

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes (all when n < 0); b"" at the end."""
        if n < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        if self.done:
            return b""
        if self.expect_continue:
            self.expect_continue = False
            self.conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self.chunked:
            data = self.conn.read_some(min(n, self.remaining))
            if not data:
                raise BadRequest("unexpected end of body")
            self.remaining -= len(data)
            self.done = self.remaining == 0
            return data
        if self.chunk_left == 0:
            line = self.conn.read_until(b"\r\n", 4096)
            if line is None:
                raise BadRequest("unexpected end of chunked body")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := self.conn.read_until(b"\r\n", MAX_HEADER_BYTES)) not in (
                    b"\r\n",
                    None,
                ):
                    del trailer
                self.done = True
                return b""
            self.chunk_left = size
        data = self.conn.read_some(min(n, self.chunk_left))
        if not data:
            raise BadRequest("unexpected end of chunked body")
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            self.conn.read_exact(2)
        return data

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.read(256 * 1024), b"")

    def drain(self) -> None:
        if self.expect_continue:
            # The client may still send the body it was not asked for: the connection
            # cannot be reused, so the caller closes it.
            raise BadRequest("request body left unread")
        for _ in self:
            pass


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: Body
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    # bytes are sent with Content-Length; an iterable is streamed chunked.
    body: bytes | Iterable[bytes] = b""
    on_close: object = None  # callable run after the body is sent or abandoned

    @classmethod
    def json(cls, status: int, payload: object, headers: list[tuple[str, str]] | None = None):
        body = json.dumps(payload, separators=(",", ":")).encode()
        return cls(status, [("Content-Type", "application/json"), *(headers or [])], body)

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        body = json.dumps({"code": status, "message": message}).encode()
        return cls(status, [("Content-Type", "application/json; charset=utf-8")], body)


def read_request(conn: Connection) -> Request | None:
    """The next request on the connection, or None when the client has gone."""
    head = conn.read_until(b"\r\n\r\n", MAX_HEADER_BYTES)
    if head is None:
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError as e:
        raise BadRequest("bad request line") from e
    headers: dict[str, str] = {}
    raw: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        name, value = name.strip(), value.strip()
        raw.append((name, value))
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = None
    if not chunked and "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as e:
            raise BadRequest("bad Content-Length") from e
    split = urlsplit(target)
    return Request(
        method=method.upper(),
        target=target,
        path=unquote(split.path),
        query=parse_qs(split.query, keep_blank_values=True),
        headers=headers,
        body=Body(conn, length, chunked, "100-continue" in headers.get("expect", "").lower()),
        raw_headers=raw,
    )


class _FileRange(Protocol):
    """A streamed body that is bytes [offset, offset+length) of an open file."""

    file: BinaryIO
    offset: int
    length: int


def _is_file_range(body: object) -> TypeGuard[_FileRange]:
    return getattr(body, "length", None) is not None


def write_response(conn: Connection, resp: Response, head_only: bool = False) -> None:
    """Send `resp`; an iterable body goes out chunked, flushed piece by piece."""
    status_line = f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Status')}\r\n"
    names = {k.lower() for k, _ in resp.headers}
    headers = list(resp.headers)
    body = resp.body
    # A body that is a range of an open file goes out with sendfile(2), unchunked.
    region = body if _is_file_range(body) else None
    if region is not None:
        headers.append(("Content-Length", str(region.length)))
    elif not isinstance(body, bytes | bytearray):
        headers.append(("Transfer-Encoding", "chunked"))
    elif "content-length" not in names and resp.status not in (204, 304):
        headers.append(("Content-Length", str(len(body))))
    head = status_line + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    try:
        if isinstance(body, bytes | bytearray):
            conn.send(head.encode("latin-1") + (b"" if head_only else bytes(body)))
            return
        conn.send(head.encode("latin-1"))
        if region is not None:
            if not head_only and region.length:
                conn.sock.sendfile(region.file, region.offset, region.length)
            return
        for piece in body:
            if piece:
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
    finally:
        # Only a streamed body has a close(); bytes have none.
        close = getattr(body, "close", None)
        if close:
            close()
        if callable(resp.on_close):
            resp.on_close()
