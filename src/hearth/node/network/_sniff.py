"""What a connection's first bytes say about where it goes: a TLS server name or an HTTP Host.

The parsing is OpenSSL's (a ClientHello fed to a server-side `SSLObject` whose server-name
callback records the name, then stops the handshake) and h11's (a request head): both
are the parsers that will see these bytes anyway, so the proxy cannot be told one name
while the server is told another through a malformed message only one of them accepts.
"""

from __future__ import annotations

import functools
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Literal

import h11

Protocol = Literal["tls", "http"]

_TLS_HANDSHAKE = 0x16
# A request line's method: standard and extension methods are upper case in practice, which
# tells an HTTP client apart from other protocols on the first bytes, before a full line.
_HTTP_METHOD = re.compile(rb"[A-Z][A-Z_-]{0,23}(?: |$)")
_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")


@dataclass(frozen=True)
class Hello:
    """A connection's first message, as far as the proxy cares."""

    protocol: Protocol | None  # None: neither TLS nor HTTP (or never seen)
    name: str | None  # lower case, without port or trailing dot; None: no usable name


UNKNOWN = Hello(None, None)


def sniff(data: bytes, *, limit: int) -> Hello | None:
    """The hello that `data` (a connection's first bytes) starts with; None when more bytes
    are needed to tell. `limit` bounds how much is looked at: a message not complete
    within it has no name."""
    if not data:
        return None
    if data[0] == _TLS_HANDSHAKE:
        return _client_hello(data)
    if _HTTP_METHOD.match(data):
        return _request_head(data, limit)
    return UNKNOWN


def host_name(text: str) -> str | None:
    """`text` (an SNI or a Host without its port) as a DNS name; None for an address
    literal in any form the host's resolver would take as one ("1.2.3.4", "0x7f.1", "::1")
    or something that is not a name."""
    name = text.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not _NAME.fullmatch(name):
        return None
    try:
        socket.inet_aton(name)
    except OSError:
        return name
    return None


def _client_hello(data: bytes) -> Hello | None:
    incoming = ssl.MemoryBIO()
    tls = _sni_context().wrap_bio(incoming, ssl.MemoryBIO(), server_side=True)
    incoming.write(data)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return None
    except ssl.SSLError:
        pass  # the callback's stop, or not a ClientHello OpenSSL takes
    name = getattr(tls, "sniffed_name", None)
    return Hello("tls", host_name(name) if name else None)


def _request_head(data: bytes, limit: int) -> Hello | None:
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=limit)
    parser.receive_data(data)
    try:
        event = parser.next_event()
    except h11.RemoteProtocolError:
        return UNKNOWN
    if event is h11.NEED_DATA:
        return None
    if not isinstance(event, h11.Request):
        return UNKNOWN
    host = next((value for key, value in event.headers if key == b"host"), None)
    if host is None:
        return Hello("http", None)
    return Hello("http", _without_port(host.decode("latin-1")))


def _without_port(host: str) -> str | None:
    if host.startswith("["):  # an IPv6 literal, "[::1]:8080"
        return None
    name, _, port = host.rpartition(":")
    return host_name(name if name and port.isdigit() else host)


@functools.cache
def _sni_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.sni_callback = _record_name
    return context


def _record_name(tls: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> int:
    tls.sniffed_name = name  # type: ignore[attr-defined]
    return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE  # the name is all we wanted
