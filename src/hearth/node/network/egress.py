"""The node's egress proxy: the domain rules and header transforms of sandboxes' policies.

The kernel redirects a sandbox's TCP connections to this proxy (all of them when its policy
has domains; ports 80 and 443 when it only has transforms). For each one the proxy learns
where the sandbox meant to go (SO_ORIGINAL_DST), looks at the first bytes without
consuming them (a TLS ClientHello's server name, an HTTP request's Host), decides, and
then either splices the connection to its destination or relays it as HTTP with the
policy's headers set, terminating TLS with a certificate of the local CA when it can.

The decision (E2B's, and one rule of Hearth's for transforms):
- a name the policy allows is resolved here and reached at one of its addresses, on the
  original port: the sandbox's own resolution (its /etc/hosts) never picks the address;
- a name with transforms that is not among the domains is reached the same way, at an
  address the address rules allow: a header that carries a secret goes only where the
  name points, never where the sandbox says the name is;
- otherwise the original destination, if the address rules allow it;
- otherwise, and for any address in `blocked`, a TCP reset, so clients fail at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
import h11

from hearth.node.network._sniff import UNKNOWN, Hello, sniff
from hearth.node.network.policy import Egress

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
PEEK_LIMIT = 16 * 1024  # a first message not complete within this has no name
CHUNK = 256 * 1024  # a read's size where bytes pass through Python streams
WRITE_HIGH_WATER = 256 * 1024
CLOSE_TIMEOUT = 5.0  # how long a graceful close (a TLS close_notify) may take
_LINGER_RESET = struct.pack("ii", 1, 0)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # connecting there reaches this host
# Framing is h11's to write: a transform may not change how a body is delimited.
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_EXPECTED = (OSError, EOFError, h11.ProtocolError)

Resolve = Callable[[str], Awaitable[list[str]]]


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where a redirected connection was going: netfilter's SO_ORIGINAL_DST (a sockaddr_in)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, address = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(address), port


@dataclass(frozen=True)
class _Route:
    """Where a connection went and why: what `cut` checks against a new policy."""

    address: str
    port: int
    name: str | None  # the SNI or Host the sandbox sent, if any
    by_name: bool  # the address is one the proxy resolved `name` to, allowed as a domain
    headers: dict[str, str]  # the transforms the policy asked for (applied or not)
    sniffed: bool  # False: its first bytes were never looked at, the name is unknown


@dataclass(eq=False)
class _Connection:
    """One accepted connection and the releases of what it holds, run once when its task
    ends, whatever ended it."""

    source: str
    sock: socket.socket
    releases: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    client: asyncio.Transport | None = None  # the transport that took over `sock`
    handed_off: bool = False  # `sock` belongs to asyncio (its transport closes it)
    route: _Route | None = None

    def reset(self) -> None:
        """Close the sandbox's side with a TCP reset, if it is still open."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        if self.client is not None:
            self.client.abort()
        elif not self.handed_off:
            self.sock.close()


class EgressProxy:
    """The egress proxy of one node: a listener and every connection it accepted."""

    def __init__(
        self,
        policy_of: Callable[[str], Egress | None],
        *,
        blocked: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
        nameservers: Sequence[str] = (),
        tls_for: Callable[[str], ssl.SSLContext] | None = None,
        upstream_tls: ssl.SSLContext | None = None,
        original_destination: Callable[[socket.socket], tuple[str, int]] = original_destination,
        resolve: Resolve | None = None,
        peek_timeout: float = 1.0,
        connect_timeout: float = 10.0,
    ) -> None:
        """`policy_of(ip)`: the policy of the sandbox at that address, None for anything
        else. `blocked`: destinations never connected to. `nameservers` ("ip" or
        "ip:port"): where names are resolved; empty: the host's resolver. `tls_for(name)`:
        a server context presenting a certificate for `name`, to apply transforms inside
        TLS; `upstream_tls`: how the servers are verified then (default: the system's
        CAs). `resolve` replaces the resolver (tests). `peek_timeout`: how long to wait
        for a client's first bytes (a server may be the one to speak first)."""
        self._policy_of = policy_of
        self._blocked = tuple(ipaddress.ip_network(net) for net in blocked)
        self._tls_for = tls_for
        self._upstream_tls = upstream_tls
        self._original_destination = original_destination
        self._resolve = resolve or (_dns_resolver(nameservers) if nameservers else _host_resolve)
        self._peek_timeout = peek_timeout
        self._connect_timeout = connect_timeout
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._connections: dict[asyncio.Task, _Connection] = {}
        self._told_passthrough = False

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "0.0.0.0", port: int = 0) -> int:
        """Listen on `host:port` and return the port."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(1024)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept(listener))
        bound = listener.getsockname()[1]
        log.debug("egress proxy listening on %s:%d", host, bound)
        return bound

    async def close(self) -> None:
        """Stop listening and close every open connection."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the transports' closing callbacks, scheduled by the aborts

    def cut(self, source: str) -> None:
        """The policy of sandbox `source` changed: close its connections the new policy
        would not let through as they are (all of them if it has none). Connections still
        deciding check the policy again once connected."""
        policy = self._policy(source)
        for task, conn in list(self._connections.items()):
            if conn.source != source:
                continue
            if policy is None or (conn.route is not None and not _keeps(policy, conn.route)):
                log.info("egress %s: closing its connection to %s", source, _where(conn.route))
                task.cancel()

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # --- accepting --------------------------------------------------------------------------

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, (source, _) = await loop.sock_accept(listener)
            except OSError as error:  # out of descriptors and the like: later ones may pass
                log.warning("egress proxy: accept failed: %s", error)
                await asyncio.sleep(0.1)
                continue
            if self._policy(source) is None:
                log.info("egress: refused a connection from %s, not a sandbox", source)
                _reset(sock)
                continue
            # What the sandbox sends is passed on as it comes: its own stack did any
            # coalescing. (asyncio sets this only on sockets made with proto=IPPROTO_TCP.)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(source, sock)
            conn.releases.callback(conn.reset)
            task = asyncio.create_task(self._serve(conn))
            self._connections[task] = conn
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        self._connections.pop(task).releases.close()

    def _policy(self, source: str) -> Egress | None:
        try:
            return self._policy_of(source)
        except Exception:
            log.exception("egress %s: no policy", source)
            return None

    async def _serve(self, conn: _Connection) -> None:
        try:
            await self._handle(conn)
        except asyncio.CancelledError:
            log.debug("egress %s: closed its connection to %s", conn.source, _where(conn.route))
            raise
        except Exception as error:
            if not _expected(error):
                log.exception("egress %s: connection to %s", conn.source, _where(conn.route))
            else:
                log.debug("egress %s -> %s: %r", conn.source, _where(conn.route), error)

    # --- deciding ---------------------------------------------------------------------------

    async def _handle(self, conn: _Connection) -> None:
        try:
            address, port = self._original_destination(conn.sock)
        except (OSError, KeyError, ValueError) as error:
            log.info("egress %s: refused, no original destination (%s)", conn.source, error)
            return
        policy = self._policy(conn.source)
        if policy is None:
            return
        if not policy.transforms and self._reachable(address) and policy.allows_address(address):
            # Allowed whatever its name says and nothing to set: no need to wait for a name
            # (a server that speaks first would make the sandbox wait the peek timeout).
            hello, sniffed = UNKNOWN, False
        else:
            hello, sniffed = await self._peek(conn.sock), True
            policy = self._policy(conn.source)
            if policy is None:
                return
        candidates, by_name = await self._destinations(policy, hello, address)
        if not candidates:
            named = hello.name is not None and policy.allows_name(hello.name)
            log.info(
                "egress %s: refused %s -> %s:%d (%s)",
                conn.source,
                hello.name or "-",
                address,
                port,
                "the name has no usable address" if named else "not allowed",
            )
            return
        headers = policy.headers_for(hello.name) if hello.name else {}

        def routed(reached: str) -> bool:
            # The policy may have changed while resolving and connecting; `cut` sees the
            # connection from here on.
            conn.route = _Route(reached, port, hello.name, by_name, headers, sniffed)
            if not _keeps(self._policy(conn.source), conn.route):
                log.info("egress %s: refused %s, policy changed", conn.source, _where(conn.route))
                return False
            log.debug(
                "egress %s: %s -> %s (%s)",
                conn.source,
                hello.name or "-",
                _where(conn.route),
                "name" if by_name else "address",
            )
            return True

        # `headers` come from the name: with headers there is one.
        if headers and hello.name is not None and hello.protocol == "http":
            await self._relay(conn, candidates, port, routed, None, hello.name, headers)
        elif (
            headers
            and hello.name is not None
            and hello.protocol == "tls"
            and self._tls_for is not None
        ):
            context = self._tls_for(hello.name)
            context.set_alpn_protocols(["http/1.1"])  # the relay speaks HTTP/1.1 only
            await self._relay(conn, candidates, port, routed, context, hello.name, headers)
        else:
            if headers and hello.protocol == "tls" and not self._told_passthrough:
                self._told_passthrough = True
                log.warning("egress: no local CA, header transforms pass over TLS untouched")
            await self._splice(conn, candidates, port, routed)

    async def _destinations(
        self, policy: Egress, hello: Hello, address: str
    ) -> tuple[list[str], bool]:
        """The addresses to try, and whether they are the name's (by the domain rules)."""
        name = hello.name
        if name and policy.allows_name(name):
            return await self._addresses(name, lambda _address: True), True
        if name and policy.headers_for(name):
            found = await self._addresses(name, policy.allows_address)
            if found:
                return found, False
        if self._reachable(address) and policy.allows_address(address):
            return [address], False
        return [], False

    async def _addresses(self, name: str, allowed: Callable[[str], bool]) -> list[str]:
        try:
            async with asyncio.timeout(self._connect_timeout):
                found = await self._resolve(name)
        except (OSError, ValueError) as error:
            log.debug("egress: %s does not resolve: %s", name, error)
            return []
        usable = [a for a in dict.fromkeys(found) if self._reachable(a) and allowed(a)]
        if len(usable) < len(found):
            log.debug("egress: %s resolves to %s, of which %s usable", name, found, usable)
        return usable

    def _reachable(self, address: str) -> bool:
        """Whether `address` may be connected to at all: IPv4 unicast, not in `blocked`."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version != 4 or ip.is_multicast or ip.is_reserved or ip in _THIS_NETWORK:
            return False
        return not any(ip in net for net in self._blocked)

    async def _peek(self, sock: socket.socket) -> Hello:
        """The client's first message, left unread in the socket. SO_RCVLOWAT makes the
        socket readable only once more bytes than already seen have arrived, so waiting
        for the rest of a message does not spin."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._peek_timeout
        seen = 0
        try:
            while True:
                try:
                    data: bytes | None = sock.recv(PEEK_LIMIT, socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    data = None
                if data == b"":
                    return UNKNOWN  # closed before saying anything
                if data is not None:
                    hello = sniff(data, limit=PEEK_LIMIT)
                    if hello is not None:
                        return hello
                    if len(data) >= PEEK_LIMIT:
                        return UNKNOWN
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return UNKNOWN
                if data is not None and len(data) == seen:
                    # Readable with nothing new: the client's EOF after an incomplete
                    # message, or the kernel waking early (memory pressure).
                    await asyncio.sleep(min(remaining, 0.005))
                    continue
                if data:
                    seen = len(data)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, seen + 1)
                await _readable(sock, remaining)
        except TimeoutError:
            return UNKNOWN
        finally:
            if seen:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    async def _dial(
        self,
        candidates: list[str],
        port: int,
        connect: Callable[[str, int], Awaitable[Any]],
    ) -> tuple[str, Any]:
        failure: OSError | None = None
        for address in candidates:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    return address, await connect(address, port)
            except OSError as error:  # TimeoutError and certificate errors included
                log.debug("egress: %s:%d: %s", address, port, error)
                failure = error
        assert failure is not None
        raise failure

    # --- relaying ---------------------------------------------------------------------------

    async def _splice(
        self,
        conn: _Connection,
        candidates: list[str],
        port: int,
        routed: Callable[[str], bool],
    ) -> None:
        loop = asyncio.get_running_loop()
        splice = _Splice(loop)
        conn.releases.callback(splice.reset)
        reached, _ = await self._dial(
            candidates, port, lambda a, p: loop.create_connection(lambda: splice.server, a, p)
        )
        if not routed(reached):
            return
        conn.handed_off = True
        conn.client, _ = await loop.connect_accepted_socket(lambda: splice.client, conn.sock)
        await splice.done

    async def _relay(
        self,
        conn: _Connection,
        candidates: list[str],
        port: int,
        routed: Callable[[str], bool],
        client_tls: ssl.SSLContext | None,
        name: str,
        headers: dict[str, str],
    ) -> None:
        upstream_tls = None
        if client_tls is not None:
            if self._upstream_tls is None:  # the system's CAs, loaded once it is needed
                self._upstream_tls = ssl.create_default_context()
            upstream_tls = self._upstream_tls

        async def connect(address: str, port: int) -> tuple[Any, Any]:
            reader, writer = await asyncio.open_connection(
                address,
                port,
                ssl=upstream_tls,
                server_hostname=name if upstream_tls else None,
                ssl_shutdown_timeout=CLOSE_TIMEOUT if upstream_tls else None,
                limit=CHUNK,
            )
            conn.releases.callback(_abort, writer.transport)
            return reader, writer

        reached, server = await self._dial(candidates, port, connect)
        if not routed(reached):
            return
        conn.handed_off = True
        client = await _accepted_streams(conn, client_tls)
        await _HttpRelay(client, server, headers).run()
        await asyncio.gather(_close(client[1]), _close(server[1]))


def _keeps(policy: Egress | None, route: _Route) -> bool:
    """Whether `policy` would let a connection through as `route` took it."""
    if policy is None:
        return False
    if route.by_name:
        allowed = route.name is not None and policy.allows_name(route.name)
    else:
        allowed = policy.allows_address(route.address)
    if not allowed:
        return False
    if not route.sniffed:
        return not policy.transforms
    return (policy.headers_for(route.name) if route.name else {}) == route.headers


def _where(route: _Route | None) -> str:
    if route is None:
        return "(undecided)"
    return f"{route.name or '-'} at {route.address}:{route.port}"


def _expected(error: Exception) -> bool:
    """Whether `error` is the network's doing (a peer's reset, a protocol violation)
    rather than a bug of the proxy's."""
    if isinstance(error, ExceptionGroup):
        return error.split(_EXPECTED)[1] is None
    return isinstance(error, _EXPECTED)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def _abort(transport: asyncio.WriteTransport) -> None:
    """Reset a transport's connection, if it is still open."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


async def _readable(sock: socket.socket, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, _set_ready, ready)
    try:
        async with asyncio.timeout(timeout):
            await ready
    finally:
        loop.remove_reader(fd)


def _set_ready(ready: asyncio.Future) -> None:
    if not ready.done():
        ready.set_result(None)


async def _accepted_streams(
    conn: _Connection, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over the sandbox's side, TLS terminated with `context` if given."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol,
        conn.sock,
        ssl=context,
        ssl_shutdown_timeout=CLOSE_TIMEOUT if context else None,
    )
    conn.client = transport
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close gracefully (FIN, or TLS close_notify), for a bounded time: what is still open
    afterwards, the connection's releases reset."""
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()


# --- splicing ---------------------------------------------------------------------------------


class _Splice:
    """Two TCP connections joined: what one end receives is written to the other from the
    event loop's read callback (no task, no await per chunk), an EOF is passed on as a
    half-close, a reset as a reset, and reading pauses while the other end's write buffer
    is full."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.client = _End(self)
        self.server = _End(self)
        self.client.peer, self.server.peer = self.server, self.client
        self.done: asyncio.Future[None] = loop.create_future()

    def reset(self) -> None:
        self.client.reset()
        self.server.reset()

    def ended(self) -> None:
        if self.client.lost and self.server.lost and not self.done.done():
            self.done.set_result(None)


class _End(asyncio.Protocol):
    """One end of a splice."""

    peer: _End

    def __init__(self, splice: _Splice) -> None:
        self.splice = splice
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if self.peer.transport is None:
            transport.pause_reading()  # nowhere to write to yet
        elif self.peer.lost:
            self.reset()
        else:
            self.peer.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        peer = self.peer.transport
        if peer is not None and not peer.is_closing():
            peer.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer.transport
        if peer is not None and not peer.is_closing():
            peer.write_eof()
            if self.peer.eof:  # both directions are over
                peer.close()
                if self.transport is not None:
                    self.transport.close()
        return True  # keep the other direction going

    def pause_writing(self) -> None:
        if self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        peer = self.peer
        if peer.transport is not None and not peer.lost:
            if exc is None:
                peer.transport.close()
            else:
                peer.reset()
        self.splice.ended()

    def reset(self) -> None:
        if self.transport is not None and not self.lost:
            _abort(self.transport)


# --- HTTP with transforms ---------------------------------------------------------------------


class _HttpRelay:
    """HTTP/1.x between a sandbox and a server, parsed on both sides (h11), with the
    policy's headers set on every request. The server's side decides when the connection
    is over; a protocol switch (a WebSocket's 101, a CONNECT's 2xx) makes the rest a plain
    tunnel."""

    _requesting: asyncio.Task
    _responding: asyncio.Task

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        headers: dict[str, str],
    ) -> None:
        self._client_reader, self._client_writer = client
        self._server_reader, self._server_writer = server
        self._headers = [
            (k.encode(), v.encode()) for k, v in headers.items() if k.lower() not in _FRAMING
        ]
        self._replaced = {k.lower() for k, _ in self._headers}
        self._down = h11.Connection(h11.SERVER, max_incomplete_event_size=PEEK_LIMIT)
        self._up = h11.Connection(h11.CLIENT)
        self._turn = asyncio.Event()  # set when a new request/response cycle starts
        self._switched = False

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._requesting = group.create_task(self._requests())
            self._responding = group.create_task(self._responses())
        if self._switched:
            await self._tunnel()

    async def _requests(self) -> None:
        down, up = self._down, self._up
        while True:
            event = down.next_event()
            if event is h11.NEED_DATA:
                down.receive_data(await self._client_reader.read(CHUNK))
            elif event is h11.PAUSED:
                if self._switched:
                    return
                await self._turn.wait()
            elif isinstance(event, h11.ConnectionClosed):
                if up.their_state is h11.IDLE:  # no response to wait for: all is said
                    self._responding.cancel()
                elif self._server_writer.can_write_eof():
                    self._server_writer.write_eof()  # the half-close, passed on
                return
            else:
                if isinstance(event, h11.Request):
                    event = self._transformed(event)
                # Not a sentinel (handled above); `is` does not narrow h11's sentinel types.
                await _send(up, cast(h11.Event, event), self._server_writer)
                self._next_cycle()

    async def _responses(self) -> None:
        down, up = self._down, self._up
        while True:
            event = up.next_event()
            if event is h11.NEED_DATA:
                up.receive_data(await self._server_reader.read(CHUNK))
                continue
            if event is h11.PAUSED:
                if up.our_state is h11.SWITCHED_PROTOCOL:
                    self._switched = True
                    self._wake()
                    return
                await self._turn.wait()
                continue
            if isinstance(event, h11.ConnectionClosed):
                break
            # Not a sentinel (handled above); `is` does not narrow h11's sentinel types.
            await _send(down, cast(h11.Event, event), self._client_writer)
            if isinstance(event, h11.EndOfMessage):
                if down.our_state is not h11.DONE or up.their_state is not h11.DONE:
                    break  # one side asked to close after this response
                self._next_cycle()
        self._requesting.cancel()

    def _transformed(self, request: h11.Request) -> h11.Request:
        kept = [(k, v) for k, v in request.headers.raw_items() if k.lower() not in self._replaced]
        return h11.Request(
            method=request.method,
            target=request.target,
            headers=kept + self._headers,
            http_version=request.http_version,
        )

    def _next_cycle(self) -> None:
        down, up = self._down, self._up
        states = (down.our_state, down.their_state, up.our_state, up.their_state)
        if all(state is h11.DONE for state in states):
            down.start_next_cycle()
            up.start_next_cycle()
            self._wake()

    def _wake(self) -> None:
        self._turn.set()
        self._turn = asyncio.Event()

    async def _tunnel(self) -> None:
        from_client, _ = self._down.trailing_data
        from_server, _ = self._up.trailing_data
        if from_client:
            self._server_writer.write(from_client)
        if from_server:
            self._client_writer.write(from_server)
        async with asyncio.TaskGroup() as group:
            group.create_task(_pipe(self._client_reader, self._server_writer))
            group.create_task(_pipe(self._server_reader, self._client_writer))


async def _send(conn: h11.Connection, event: h11.Event, writer: asyncio.StreamWriter) -> None:
    data = conn.send(event)
    if data:
        writer.write(data)
        await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


# --- resolving --------------------------------------------------------------------------------


async def _host_resolve(name: str) -> list[str]:
    """The host's resolver, IPv4 only: slots are IPv4 only, and `blocked` is IPv4 ranges
    (an IPv6 or IPv4-mapped address would pass around it)."""
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    return [cast(str, info[4][0]) for info in found]  # AF_INET: (host, port)


def _dns_resolver(nameservers: Sequence[str]) -> Resolve:
    """A resolver asking `nameservers` ("ip" or "ip:port") for A records."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [_nameserver(entry) for entry in nameservers]
    resolver.lifetime = 5.0
    # Answers kept for their TTL: a new connection to a name costs no round trip.
    resolver.cache = dns.resolver.LRUCache(max_size=4096)

    async def resolve(name: str) -> list[str]:
        try:
            answer = await resolver.resolve(name, "A", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as error:
            raise OSError(f"{name}: {error}") from error
        return [record.address for record in answer]

    return resolve


def _nameserver(entry: str) -> dns.nameserver.Do53Nameserver:
    try:
        ipaddress.ip_address(entry)
    except ValueError:
        host, _, port = entry.rpartition(":")
        host = host.strip("[]")
        ipaddress.ip_address(host)  # a ValueError for what is not "ip:port"
        return dns.nameserver.Do53Nameserver(host, int(port))
    return dns.nameserver.Do53Nameserver(entry, 53)
