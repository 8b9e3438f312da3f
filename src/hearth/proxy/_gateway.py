"""The listener in front of the API: each request goes to a sandbox's port or to the API.

Routing is per request, so one keep-alive connection may alternate between the API and
several sandboxes; the upstream connection is kept while consecutive requests go to the
same place. Everything the SDK learns from the gateway itself (the 502 that makes
`is_running()` false, the 403 of a traffic token) is decided here, before any byte goes
upstream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs

import h11

from hearth.node.interface import SandboxAddress
from hearth.proxy import _routing as routing
from hearth.proxy._connect import stream_end_message
from hearth.proxy._pages import looks_like_browser, render
from hearth.proxy._relay import SWITCHED, Broken, Connect, Peer, Upstream, UpstreamFailed, exchange
from hearth.proxy._routing import Refusal, ToApi, ToSandbox, Unnamed
from hearth.proxy._streams import SandboxStreams
from hearth.proxy._traffic import Traffic

log = logging.getLogger(__name__)

# (client address, Host without its port) -> headers to set on the request: the header
# transforms of the sandbox at that address, for its requests to other sandboxes' URLs.
HeadersFor = Callable[[str, str], Mapping[str, str]]

CONNECT_TIMEOUT = 10.0
# Longer than any SDK's keep-alive expiry (300 s), so the client always closes first.
IDLE_TIMEOUT = 600.0
# A refused request's body is read and dropped up to this size, to keep the connection.
DRAIN_LIMIT = 1 << 20
LINGER = 2.0


class SandboxRoute(Protocol):
    """What the gateway needs to know of a running sandbox."""

    @property
    def address(self) -> SandboxAddress: ...

    @property
    def envd_access_token(self) -> str | None: ...

    @property
    def traffic_access_token(self) -> str | None:
        """None: its ports are public."""

    @property
    def mask_request_host(self) -> str | None:
        """The Host the sandbox's services see (`${PORT}` is the port), or None: as sent."""


class SandboxDirectory(Protocol):
    """The running sandboxes, as the control plane knows them."""

    def route(self, sandbox_id: str) -> SandboxRoute | None:
        """How to reach a running sandbox; None if it is unknown, killed or paused."""

    def secured(self) -> Iterable[tuple[str, str]]:
        """(sandbox id, envd access token) of every running sandbox that has a token."""

    async def wake(self, sandbox_id: str) -> bool:
        """Resume a paused sandbox that traffic may resume (autoResume); True if it runs
        now, False if it is not one to resume."""


@dataclass(frozen=True)
class _Target:
    key: tuple[object, ...]
    connect: Connect
    sandbox_id: str | None = None
    port: int = 0
    host: bytes | None = None  # replaces the request's Host header
    address: str = ""  # where the sandbox ran when the request was routed


class Gateway:
    """Serves HTTP/1.1 connections (`handle` is an `asyncio.start_server` callback).

    With `api_socket` (a Unix socket path, abstract if it starts with NUL) requests that
    do not name a sandbox go to the API there; without it the listener is proxy-only.
    What it relays for sandboxes and what it refuses is tallied in `traffic`.
    """

    def __init__(
        self,
        directory: SandboxDirectory,
        *,
        domains: Sequence[str] = (),
        api_socket: str | None = None,
        headers_for: HeadersFor | None = None,
        traffic: Traffic | None = None,
    ) -> None:
        self._directory = directory
        self.traffic = traffic if traffic is not None else Traffic()
        self._headers_for = headers_for
        self._domains = tuple(d.lower() for d in domains)
        self._api_socket = api_socket
        self._connections: set[asyncio.Task[None]] = set()
        self._streams = SandboxStreams(self._host_of)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        client = Peer(h11.SERVER, reader, writer, "client")
        peer = writer.get_extra_info("peername")
        client_address = peer[0] if peer else ""
        upstream: Upstream | None = None
        try:
            while True:
                request = await self._next_request(client)
                if request is None:
                    break
                target = await self._decide(request)
                if isinstance(target, Refusal):
                    await self._refuse(client, request, target)
                else:
                    if target.sandbox_id is not None:
                        self.traffic.requests += 1
                    request = self._transformed(request, client_address)
                    upstream = await self._forward(client, request, target, upstream)
                if not _next_cycle(client):
                    break
        except (Broken, _Abort):
            client.abort()
        except asyncio.CancelledError:
            # Shutdown (`aclose`). Ending normally keeps asyncio's stream callback, which
            # treats a cancelled connection task as an error, quiet.
            client.abort()
        except Exception:
            log.exception("gateway connection failed")
            client.abort()
        finally:
            if upstream is not None:
                await upstream.aclose()
            await _close(client)
            self._connections.discard(task)

    def _transformed(self, request: h11.Request, client_address: str) -> h11.Request:
        """`request` with the header transforms of the sandbox that sends it, if any (its
        egress proxy cannot see requests to the server's own address)."""
        if self._headers_for is None or not client_address:
            return request
        host = next((v for n, v in request.headers.raw_items() if n.lower() == b"host"), b"")
        name = host.decode("latin-1").rsplit(":", 1)[0] if b"]" not in host else ""
        headers = self._headers_for(client_address, name)
        if not headers:
            return request
        names = {n.lower().encode() for n in headers}
        kept = [(n, v) for n, v in request.headers.raw_items() if n.lower() not in names]
        added = [(n.encode(), v.encode()) for n, v in headers.items()]
        return h11.Request(
            method=request.method,
            target=request.target,
            headers=kept + added,
            http_version=request.http_version,
        )

    async def aclose(self) -> None:
        """End every open connection (server shutdown)."""
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._streams.aclose()

    # --- one request -------------------------------------------------------------------

    async def _next_request(self, client: Peer) -> h11.Request | None:
        try:
            async with asyncio.timeout(IDLE_TIMEOUT):
                event = await client.next_event()
        except TimeoutError:
            return None
        except Broken:
            # Garbage instead of a request: answer 400 if h11 still lets us.
            if client.h11.our_state is h11.SEND_RESPONSE:
                await self._refuse(client, None, Refusal(400, "Bad Request", plain=True))
            return None
        return event if isinstance(event, h11.Request) else None

    async def _decide(self, request: h11.Request) -> _Target | Refusal:
        headers = _first_values(request.headers)
        where = routing.classify(
            headers, request.target, domains=self._domains, api=self._api_socket is not None
        )
        if isinstance(where, Unnamed):
            where = self._meant_for(request, headers)
        if isinstance(where, ToApi):
            return self._api_target()
        if isinstance(where, Refusal):
            return where
        refusal = routing.reserved(where.port, request.target)
        if refusal is not None:
            return refusal
        route = self._directory.route(where.sandbox_id)
        if route is None and await self._directory.wake(where.sandbox_id):
            route = self._directory.route(where.sandbox_id)
        if route is None:
            return routing.not_found(where.sandbox_id)
        if where.port != routing.ENVD_PORT and route.traffic_access_token:
            token = headers.get(b"e2b-traffic-access-token")
            if token is None:
                return routing.traffic_token_missing(where.sandbox_id)
            if not hmac.compare_digest(token, route.traffic_access_token.encode()):
                return routing.traffic_token_invalid(where.sandbox_id)
        return self._sandbox_target(where, route)

    def _api_target(self) -> _Target:
        path = self._api_socket
        assert path is not None
        return _Target(("api",), lambda: asyncio.open_unix_connection(path))

    def _sandbox_target(self, where: ToSandbox, route: SandboxRoute) -> _Target | Refusal:
        address = route.address
        port = address.port(where.port)
        if where.port not in address.port_map and _is_loopback(address.host):
            # A sandbox on the host's own loopback publishes only the ports it maps;
            # any other port there belongs to the host, not to the sandbox.
            return routing.port_not_open(where.sandbox_id, where.port)
        host = address.host

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await asyncio.open_connection(host, port)

        mask = route.mask_request_host
        masked = mask.replace("${PORT}", str(where.port)).encode() if mask else None
        return _Target(
            ("sandbox", where.sandbox_id, host, port),
            connect,
            where.sandbox_id,
            where.port,
            masked,
            host,
        )

    def _host_of(self, sandbox_id: str) -> str | None:
        route = self._directory.route(sandbox_id)
        return route.address.host if route is not None else None

    def _meant_for(
        self, request: h11.Request, headers: dict[bytes, bytes]
    ) -> ToApi | ToSandbox | Refusal:
        """Where a request that names no sandbox goes: to the sandbox that its signed
        `/files` URL or its envd access token belongs to, else to the API (on a listener
        without the API, nowhere)."""
        named = self._signed_files_sandbox(request) or self._token_sandbox(request, headers)
        if isinstance(named, str):
            return ToSandbox(named, routing.ENVD_PORT)
        if named is not None:
            return named
        return ToApi() if self._api_socket is not None else routing.invalid_host()

    def _token_sandbox(
        self, request: h11.Request, headers: dict[bytes, bytes]
    ) -> str | Refusal | None:
        """The sandbox whose envd access token a request to one of envd's paths carries.

        e2b 2.8 to 2.13 (npm) send their envd HTTP calls (`/files`, `/health`) to
        `E2B_SANDBOX_URL` with the token but without the routing headers (their envd
        client drops its headers). The API takes no such token, and a token names one
        sandbox; one that no running sandbox has is a sandbox not found (a paused or
        killed one's: `isRunning()` is then False, as it is at E2B).
        """
        token = headers.get(b"x-access-token")
        if token is None or not routing.envd_path(request.target):
            return None
        for sandbox_id, expected in self._directory.secured():
            if hmac.compare_digest(token, expected.encode()):
                return sandbox_id
        return routing.not_found("")

    def _signed_files_sandbox(self, request: h11.Request) -> str | None:
        """The sandbox a signed `/files` URL was made for.

        `download_url()`/`upload_url()` point at `E2B_SANDBOX_URL` without the routing
        headers; the signature is a hash over the sandbox's access token, so the one
        token that reproduces it names the sandbox (spec §3.2). envd checks it again.
        """
        if request.method not in (b"GET", b"POST"):
            return None
        path, _, query = request.target.partition(b"?")
        if path != b"/files" or b"signature=" not in query:
            return None
        params = parse_qs(query.decode("latin-1"), keep_blank_values=True)
        signature = params.get("signature", [""])[0]
        if not signature.startswith("v1_"):
            return None
        operation = "read" if request.method == b"GET" else "write"
        file_path = params.get("path", [""])[0]
        user = params.get("username", [""])[0]
        expiration = params.get("signature_expiration", [""])[0]
        for sandbox_id, token in self._directory.secured():
            raw = f"{file_path}:{operation}:{user}:{token}"
            if expiration:
                raw += f":{expiration}"
            digest = base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=")
            if hmac.compare_digest(b"v1_" + digest, signature.encode()):
                return sandbox_id
        return None

    async def _forward(
        self,
        client: Peer,
        request: h11.Request,
        target: _Target,
        cached: Upstream | None,
    ) -> Upstream | None:
        """Relay one exchange; returns the upstream connection if it may be reused."""
        upstream = cached if cached is not None and cached.key == target.key else None
        if cached is not None and upstream is None:
            await cached.aclose()
        if upstream is not None and not upstream.reusable():
            await upstream.aclose()
            upstream = None
        reused = upstream is not None
        if upstream is None:
            tally = self.traffic.sandbox_bytes if target.sandbox_id is not None else None
            try:
                upstream = await Upstream.open(target.key, target.connect, tally)
            except (OSError, TimeoutError):
                await self._refuse(client, request, self._unreachable(target))
                return None
        try:
            outcome = await self._exchange(client, request, target, upstream)
        except UpstreamFailed as failure:
            await upstream.aclose()
            replayable = reused and not failure.responded and not failure.body_sent
            if replayable and self._leads_there(target):
                # A kept connection the upstream had closed meanwhile: replay once.
                return await self._forward(client, request, target, None)
            if failure.responded:
                raise _Abort from failure  # the client must see a broken response
            await self._refuse(client, request, self._unreachable(target))
            return None
        except BaseException:
            await upstream.aclose()
            raise
        if outcome == SWITCHED:
            await upstream.aclose()
            raise _Abort  # the spliced connection has ended; close the client too
        if client.h11.their_state is h11.SEND_BODY:
            await _drain(client)  # answered early: drop the rest of the body, if small
        if upstream.finish_cycle():
            return upstream
        await upstream.aclose()
        return None

    async def _exchange(
        self, client: Peer, request: h11.Request, target: _Target, upstream: Upstream
    ) -> str | None:
        if target.sandbox_id is None:
            return await exchange(client, request, upstream, host=target.host)
        # Held while it runs: should the sandbox go (killed, paused), the connection is
        # cut, and a command's stream ends as E2B's proxy ends it.
        with self._streams.held(target.sandbox_id, target.address, upstream.peer):
            return await exchange(
                client,
                request,
                upstream,
                host=target.host,
                stream_end=stream_end_message(target.sandbox_id),
            )

    def _leads_there(self, target: _Target) -> bool:
        """Whether `target` still reaches what the request was routed to."""
        return target.sandbox_id is None or self._host_of(target.sandbox_id) == target.address

    def _unreachable(self, target: _Target) -> Refusal:
        if target.sandbox_id is None:
            return routing.api_unavailable()
        if self._directory.route(target.sandbox_id) is None:
            return routing.not_found(target.sandbox_id)
        return routing.port_not_open(target.sandbox_id, target.port)

    async def _refuse(self, client: Peer, request: h11.Request | None, refusal: Refusal) -> None:
        """Answer from the gateway itself, keeping the connection if the request's body
        can be read off cheaply."""
        self.traffic.refusals[refusal.status] += 1
        conn = client.h11
        if conn.their_state is h11.SEND_BODY and not conn.client_is_waiting_for_100_continue:
            await _drain(client)
        browser = request is not None and looks_like_browser(
            _first_values(request.headers).get(b"user-agent", b"")
        )
        headers, body = render(refusal, browser=browser)
        if conn.their_state is not h11.DONE:
            headers.append((b"connection", b"close"))
        await client.send(h11.Response(status_code=refusal.status, headers=headers))
        await client.send(h11.Data(data=body))
        await client.send(h11.EndOfMessage())


class _Abort(Exception):
    """The client's connection can only be dropped."""


async def _drain(client: Peer) -> None:
    seen = 0
    while client.h11.their_state is h11.SEND_BODY and seen <= DRAIN_LIMIT:
        event = await client.next_event()
        if isinstance(event, h11.Data):
            seen += len(event.data)
        elif not isinstance(event, h11.EndOfMessage):
            return


def _next_cycle(client: Peer) -> bool:
    conn = client.h11
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
        return True
    return False


async def _close(client: Peer) -> None:
    """Close the client's connection; if it may still be sending, linger first, so the
    kernel does not answer its unread bytes with a reset that destroys our response."""
    writer = client.writer
    if writer.transport.is_closing():
        return
    if client.h11.their_state is h11.SEND_BODY:
        with contextlib.suppress(OSError, TimeoutError):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(LINGER):
                while await client.reader.read(65536):
                    pass
    await client.aclose()


def _first_values(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    values: dict[bytes, bytes] = {}
    for name, value in headers:
        values.setdefault(name.lower(), value)
    return values


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 picks one), for `asyncio.start_server(sock=...)`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the
    # protocol says TCP, and the relay writes a response's head and body separately, so
    # with Nagle on every response through the gateway waited ~40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
