"""One port, two schemes: each accepted connection is served in TLS or in plain HTTP by
what its first byte is.

A TLS connection opens with a handshake record (0x16); an HTTP/1.1 one with a method
(a token character) or the empty lines RFC 9112 lets a client send first. The byte is
peeked (MSG_PEEK), so the connection is handed whole to asyncio, with the TLS context or
without, and then to the same handler. Anything else gets the 400 that Go's server (E2B's
proxy) answers garbage with, at once rather than when a line never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import string
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# The TLS context for a connection, given the local address the client connected to
# (what a client that sends no SNI, having connected to an IP address, must see).
TLSContexts = Callable[[str], ssl.SSLContext]

TLS_HANDSHAKE = 0x16
_HTTP_FIRST = frozenset((string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~\r\n").encode())
BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n400 Bad Request"
)
# The gateway waits as long for a connection's first request.
FIRST_BYTE_TIMEOUT = 600.0
HANDSHAKE_TIMEOUT = 60.0
LINGER = 2.0
# asyncio.start_server's default buffer limit.
STREAM_LIMIT = 1 << 16


class Listener:
    """Serves the connections of a listening socket with `handle`, in TLS where the
    client starts a handshake and `tls` is given. `start()` begins accepting; `close()`
    stops it and drops the connections still being told apart or shaking hands;
    `wait_closed()` waits for every connection's task (the handler's owner ends those
    it serves)."""

    def __init__(
        self, sock: socket.socket, handle: Handler, *, tls: TLSContexts | None = None
    ) -> None:
        self._sock = sock
        self._handle = handle
        self._tls = tls
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._opening: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._accepting = asyncio.create_task(self._accept(), name="hearth-listener")

    def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()  # which closes the socket once it has stopped
        else:
            self._sock.close()
        for task in self._opening:
            task.cancel()

    async def wait_closed(self) -> None:
        tasks = [*self._connections, *([self._accepting] if self._accepting else [])]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    conn, _ = await loop.sock_accept(self._sock)
                except OSError as e:  # out of descriptors, mostly: let some close first
                    log.warning("accepting a connection failed: %s", e)
                    await asyncio.sleep(1)
                    continue
                task = asyncio.create_task(self._serve(conn))
                self._connections.add(task)
                self._opening.add(task)
                task.add_done_callback(self._connections.discard)
                task.add_done_callback(self._opening.discard)
        finally:
            self._sock.close()

    async def _serve(self, conn: socket.socket) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            opened = await self._open(conn)
        except BaseException:
            conn.close()
            raise
        if opened is None:
            return
        self._opening.discard(task)  # the handler's owner ends it from here on
        await self._handle(*opened)

    async def _open(
        self, conn: socket.socket
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The connection as streams, in TLS if it starts a handshake; None if it ended
        or was refused."""
        try:
            async with asyncio.timeout(FIRST_BYTE_TIMEOUT):
                first = await _peek(conn)
        except (OSError, TimeoutError):
            first = b""
        if not first:
            conn.close()
            return None
        context = None
        if first[0] == TLS_HANDSHAKE and self._tls is not None:
            try:
                context = self._tls(_local_address(conn))
            except (ValueError, OSError) as e:
                log.error("no TLS context for a connection: %s", e)
                conn.close()
                return None
        elif first[0] not in _HTTP_FIRST:
            await _refuse(conn)
            return None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context else None,
            )
        except OSError as e:  # a failed handshake (ssl.SSLError is one), a reset
            log.debug("TLS handshake failed: %s", e)
            conn.close()
            return None
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _peek(conn: socket.socket) -> bytes:
    """The connection's first byte, left unread; b"" if it ended before sending one."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            pass
        readable = loop.create_future()
        loop.add_reader(conn.fileno(), _wake, readable)
        try:
            await readable
        finally:
            loop.remove_reader(conn.fileno())


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _refuse(conn: socket.socket) -> None:
    """Answer 400 and close; the client's unread bytes are read off first for a while,
    so that closing does not reset the connection under the answer."""
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(conn, BAD_REQUEST)
        conn.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(LINGER):
            while await loop.sock_recv(conn, 65536):
                pass
    except (OSError, TimeoutError):
        pass
    finally:
        conn.close()


def _local_address(conn: socket.socket) -> str:
    with contextlib.suppress(OSError, ValueError):
        address = ipaddress.ip_address(conn.getsockname()[0].split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return str(address)
    return "localhost"
