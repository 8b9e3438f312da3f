"""Relay HTTP/1.1 exchanges between a client and an upstream, streaming both bodies.

Both sides are parsed with h11, so framing (Content-Length, chunked, read-until-close,
HEAD, 1xx) is decided by one well-tested state machine on each side, while the bytes of
the bodies go through as they arrive: a Connect server stream or a 100 MB upload is
never held in memory. The request body is pumped while the response is relayed, so an
upstream may answer before it has read the whole body, and a client that hangs up in
the middle of a response is noticed at once and the upstream closed. After a `101` both
sockets are spliced raw (WebSocket and any other upgrade).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Literal, cast

import h11

from hearth.proxy._connect import StreamEnvelopes
from hearth.proxy._traffic import ByteTally

READ_SIZE = 256 * 1024
MAX_HEAD = 64 * 1024
# Hop-by-hop headers that describe one connection, not the message: each side of the
# relay manages its own connection. `upgrade` is kept for the upgrade handshake.
_CONNECTION_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-connection"})

Side = Literal["client", "upstream"]


class Broken(Exception):
    """A side closed, reset or violated HTTP in the middle of an exchange."""

    def __init__(self, side: Side, why: str = "") -> None:
        super().__init__(f"{side}: {why}" if why else side)
        self.side = side


class UpstreamFailed(Exception):
    """The upstream broke; `responded` says whether the client already got a head
    (then the client's connection can only be aborted), `body_sent` whether any byte of
    the request body went out (then the request cannot be replayed)."""

    def __init__(self, responded: bool, body_sent: bool) -> None:
        super().__init__("upstream connection failed")
        self.responded = responded
        self.body_sent = body_sent


class Peer:
    """One side of the relay: an h11 connection over an asyncio stream."""

    def __init__(
        self,
        role: type[h11.CLIENT] | type[h11.SERVER],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        side: Side,
        tally: ByteTally | None = None,
    ) -> None:
        self.h11 = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)
        self.reader = reader
        self.writer = writer
        self.side: Side = side
        self.tally = tally  # counts the bytes read and written on this side

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                raise Broken(self.side, str(e)) from e
            if event is not h11.NEED_DATA:
                # `is not` does not narrow h11's sentinel types.
                return cast("h11.Event | type[h11.PAUSED]", event)
            try:
                data = await self.reader.read(READ_SIZE)
            except OSError:
                data = b""  # a reset ends the stream like EOF; h11 tells the rest
            if self.tally is not None:
                self.tally.count_read(len(data))
            self.h11.receive_data(data)

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            if self.tally is not None:
                self.tally.count_written(len(data))
            try:
                self.writer.write(data)
                await self.writer.drain()
            except OSError as e:
                raise Broken(self.side, str(e)) from e

    def abort(self) -> None:
        """Close without a goodbye: a half-sent response must look broken, not complete."""
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self.writer.wait_closed()


Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
Counted = Callable[[int], None]  # told of bytes moved


class Upstream:
    """A connection to one target, reused while the client's requests keep going there."""

    def __init__(self, key: Hashable, peer: Peer) -> None:
        self.key = key
        self.peer = peer

    @classmethod
    async def open(
        cls, key: Hashable, connect: Connect, tally: ByteTally | None = None
    ) -> Upstream:
        reader, writer = await connect()
        return cls(key, Peer(h11.CLIENT, reader, writer, "upstream", tally))

    def finish_cycle(self) -> bool:
        """Prepare for the next request; False if this connection cannot carry one."""
        conn = self.peer.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        return False

    def reusable(self) -> bool:
        conn = self.peer.h11
        return (
            conn.our_state is h11.IDLE
            and conn.their_state is h11.IDLE
            and not self.peer.reader.at_eof()
            and not self.peer.writer.is_closing()
        )

    async def aclose(self) -> None:
        await self.peer.aclose()


@dataclass
class _Progress:
    body_sent: bool = False  # a byte of the request body went upstream
    body_done: bool = False  # the request is complete upstream; the pump only watches
    responded: bool = False  # the client got the response head


SWITCHED = "switched"


async def exchange(
    client: Peer,
    request: h11.Request,
    upstream: Upstream,
    *,
    host: bytes | None = None,
    stream_end: str | None = None,
) -> str | None:
    """Send `request` (whose body is still to come from `client`) upstream and relay the
    answer, with `host` as its Host header if given. Returns SWITCHED after a protocol
    upgrade, which has then run to its end. With `stream_end`, a Connect stream the
    upstream breaks off at an envelope boundary is ended for the client with that
    message (`_connect`), instead of breaking.

    Raises Broken("client") if the client went away, UpstreamFailed if the upstream did.
    If the upstream answered before the whole body went up, the rest stays unread: the
    upstream connection cannot be reused, and the caller drains or closes the client's.
    """
    progress = _Progress()
    headers = _forward_headers(request.headers.raw_items(), keep_upgrade=True)
    if host is not None:
        headers = [(n, host if n.lower() == b"host" else v) for n, v in headers]
    head = h11.Request(method=request.method, target=request.target, headers=headers)
    try:
        await upstream.peer.send(head)
    except (Broken, h11.LocalProtocolError) as e:
        raise UpstreamFailed(responded=False, body_sent=False) from e

    pump = asyncio.create_task(_pump_request(client, upstream.peer, progress))
    relay = asyncio.create_task(_relay_response(client, upstream.peer, progress, stream_end))
    try:
        # The pump never ends by itself (it watches the client once the body is through):
        # it finishes first only by failing.
        await asyncio.wait({pump, relay}, return_when=asyncio.FIRST_COMPLETED)
        if not relay.done():  # the pump failed
            error = pump.exception()
            if not (isinstance(error, Broken) and error.side == "upstream"):
                _raise_failure(error, progress)
            # The upstream stopped reading; it may still have answered (413, 401).
            await asyncio.wait({relay})
        if (error := relay.exception()) is not None:
            _raise_failure(error, progress)
        if pump.done() and not pump.cancelled():
            error = pump.exception()
            if isinstance(error, Broken) and error.side == "client":
                raise error
        switch = relay.result()
        if switch is None:
            return None
        pump.cancel()  # stop reading the client before h11 hands its bytes over
        await asyncio.gather(pump, return_exceptions=True)
        await _switch(client, upstream.peer, switch)
        return SWITCHED
    finally:
        for task in (pump, relay):
            task.cancel()
        await asyncio.gather(pump, relay, return_exceptions=True)


def _raise_failure(error: BaseException | None, progress: _Progress) -> None:
    if isinstance(error, Broken) and error.side == "upstream":
        raise UpstreamFailed(progress.responded, progress.body_sent) from error
    if isinstance(error, h11.LocalProtocolError):
        # The upstream sent something that cannot be passed on (a malformed header).
        raise UpstreamFailed(progress.responded, progress.body_sent) from error
    if error is not None:
        raise error


async def _pump_request(client: Peer, upstream: Peer, progress: _Progress) -> None:
    if client.h11.their_state is h11.SEND_BODY:
        while True:
            event = await client.next_event()
            if isinstance(event, h11.Data):
                progress.body_sent = True
                await upstream.send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await upstream.send(h11.EndOfMessage(headers=event.headers))
                break
            else:  # ConnectionClosed
                raise Broken("client", "closed before the end of the request body")
    else:  # a replay on a fresh connection: the request was read the first time
        await upstream.send(h11.EndOfMessage())
    progress.body_done = True
    # Watch the client while the response runs, so a hang-up ends the exchange now
    # rather than at the next write. Pipelined bytes are kept by h11 for later.
    while True:
        try:
            data = await client.reader.read(READ_SIZE)
        except OSError:
            data = b""
        if not data:
            raise Broken("client", "closed while waiting for the response")
        client.h11.receive_data(data)


async def _relay_response(
    client: Peer, upstream: Peer, progress: _Progress, stream_end: str | None
) -> h11.InformationalResponse | None:
    """Relay the answer; a 101 is returned unsent, for `_switch`."""
    while True:
        event = await upstream.next_event()
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                return event
            await client.send(
                h11.InformationalResponse(
                    status_code=event.status_code,
                    headers=_forward_headers(event.headers.raw_items()),
                    reason=event.reason,
                )
            )
        elif isinstance(event, h11.Response):
            break
        else:
            raise Broken("upstream", "closed before answering")
    await client.send(
        h11.Response(
            status_code=event.status_code,
            headers=_forward_headers(event.headers.raw_items()),
            reason=event.reason,
        )
    )
    progress.responded = True
    envelopes = StreamEnvelopes.of(event) if stream_end is not None else None
    while True:
        try:
            event = await upstream.next_event()
        except Broken:
            event = h11.ConnectionClosed()
        if isinstance(event, h11.Data):
            if envelopes is not None:
                envelopes.advance(event.data)
            await client.send(h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            await client.send(h11.EndOfMessage(headers=event.headers))
            return None
        elif envelopes is not None and envelopes.at_boundary():
            assert stream_end is not None
            await client.send(h11.Data(data=StreamEnvelopes.unavailable(stream_end)))
            await client.send(h11.EndOfMessage())
            return None
        else:
            raise Broken("upstream", "closed in the middle of the response body")


async def _switch(client: Peer, upstream: Peer, answer: h11.InformationalResponse) -> None:
    """Pass the 101 on and splice the two sockets until both directions end."""
    await client.send(
        h11.InformationalResponse(
            status_code=101,
            headers=_forward_headers(answer.headers.raw_items(), keep_upgrade=True),
            reason=answer.reason,
        )
    )
    client_rest, _ = client.h11.trailing_data
    upstream_rest, _ = upstream.h11.trailing_data
    try:
        if upstream_rest:
            client.writer.write(upstream_rest)
        if client_rest:
            upstream.writer.write(client_rest)
    except OSError:
        return
    tally = upstream.tally
    if tally is not None:
        tally.count_written(len(client_rest))  # upstream_rest was counted as it was read
    await splice(
        client.reader,
        client.writer,
        upstream.reader,
        upstream.writer,
        to_b=tally.count_written if tally else None,
        from_b=tally.count_read if tally else None,
    )


async def splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
    *,
    to_b: Counted | None = None,
    from_b: Counted | None = None,
) -> None:
    """Copy bytes both ways; a clean EOF is passed on as a half-close, an error ends both.
    `to_b` and `from_b` are told how many bytes each copy moves."""
    tasks = [
        asyncio.create_task(_copy(a_reader, b_writer, a_writer, to_b)),
        asyncio.create_task(_copy(b_reader, a_writer, b_writer, from_b)),
    ]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(not task.result() for task in done):
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _copy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    source: asyncio.StreamWriter,
    counted: Counted | None = None,
) -> bool:
    """True when the source ended cleanly and the EOF was passed on. An end that comes
    from our aborting the source (`source`, its own writer: its sandbox went away) is
    no clean end, nor is one that cannot be passed on as a half-close (TLS has none):
    both directions then end."""
    try:
        while data := await reader.read(READ_SIZE):
            if counted is not None:
                counted(len(data))
            writer.write(data)
            await writer.drain()
        if source.transport.is_closing() or not writer.can_write_eof():
            return False
        writer.write_eof()
        return True
    except OSError:
        return False


def _forward_headers(
    headers: Iterable[tuple[bytes, bytes]], *, keep_upgrade: bool = False
) -> list[tuple[bytes, bytes]]:
    """The headers to pass on, without the ones that belong to a single connection
    (unless they carry an upgrade request or a 101)."""
    items = list(headers)
    upgrading = keep_upgrade and any(name.lower() == b"upgrade" for name, _ in items)
    if upgrading:
        return items
    return [(name, value) for name, value in items if name.lower() not in _CONNECTION_HEADERS]
