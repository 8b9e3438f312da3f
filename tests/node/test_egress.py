"""The egress proxy on loopback: names, addresses, blocked ranges, transforms, cut, close.

Sandboxes are client sockets bound to their own loopback addresses (127.0.0.2, .3, ...),
the kernel's redirect is the proxy's injected `original_destination` (the address a
client "meant"), and DNS is an injected table, or a DNS server on loopback. Servers
listen on 127.0.1.x; 127.0.2.x is where nothing listens; 127.0.3.0/24 is `blocked`.
No sandbox, namespace or rule is made, so this runs beside anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import h11
import pytest

from hearth.node.network import _sniff
from hearth.node.network.egress import EgressProxy, original_destination
from hearth.node.network.policy import ALL_TRAFFIC, Egress

PROXY_HOST = "127.0.0.1"
SANDBOX, OTHER_SANDBOX, THIRD_SANDBOX, STRANGER = (
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.4",
    "127.0.0.99",
)
REAL, SPOOF, ECHO, TLS, BANNER = "127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.4", "127.0.1.5"
NOWHERE = "127.0.2.1"
BLOCKED = ipaddress.ip_network("127.0.3.0/24")
INSIDE = "127.0.3.1"
NAME = "api.example.test"
SECRET = {"Authorization": "Bearer real-secret", "X-Hearth": "1"}
RULES = {NAME: [{"transform": {"headers": SECRET}}]}
WAIT = 10.0  # only against hangs
LOGGER = "hearth.node.network.egress"


def domains(*names: str, allow: tuple[str, ...] = (), rules=None) -> Egress:
    return Egress.parse([*names, *allow], [ALL_TRAFFIC], rules)


# --- a test CA ---------------------------------------------------------------------------------


class CA:
    """A certificate authority of its own (Hearth's `LocalCA`, as the node uses it),
    issuing server certificates on demand."""

    def __init__(self, directory: Path) -> None:
        from cryptography.x509.oid import NameOID

        from hearth.tls import LocalCA

        self.directory = directory
        self._ca = LocalCA.load_or_create(directory)
        self.pem = self._ca.cert_pem
        (cn,) = self._ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.common_name = cn.value

    def client(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.pem)
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    def server(self, name: str) -> ssl.SSLContext:
        return self._ca.server_context(name)


@pytest.fixture(scope="module")
def proxy_ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    """The local CA the proxy terminates TLS with; sandboxes trust it."""
    return CA(tmp_path_factory.mktemp("proxy-ca"))


@pytest.fixture(scope="module")
def web_ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    """The CA of the servers on the "internet"; the proxy trusts it (`upstream_tls`)."""
    return CA(tmp_path_factory.mktemp("web-ca"))


# --- servers on the "internet" -----------------------------------------------------------------


@dataclass
class Server:
    label: str
    server: asyncio.Server
    accepted: int = 0

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-hearth-test\r\n")  # the server speaks first
    await writer.drain()
    await _echo(reader, writer)


def _http(label: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """An HTTP/1.1 server answering every request with JSON: who it is, the request's
    headers (as sent, in order) and a digest of its body. An Upgrade is accepted and
    the connection then echoes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        request, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(1 << 16))
            elif isinstance(event, h11.Request):
                request, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                seen = [[k.decode(), v.decode()] for k, v in request.headers.raw_items()]
                if any(k == b"upgrade" for k, _ in request.headers):
                    writer.write(
                        conn.send(
                            h11.InformationalResponse(
                                status_code=101,
                                headers=[
                                    ("Upgrade", "echo"),
                                    ("Connection", "Upgrade"),
                                    ("X-Seen", json.dumps(seen)),
                                ],
                            )
                        )
                    )
                    writer.write(conn.trailing_data[0])
                    await _echo(reader, writer)
                    return
                payload = json.dumps(
                    {
                        "server": label,
                        "headers": seen,
                        "length": len(body),
                        "digest": hashlib.sha256(body).hexdigest(),
                    }
                ).encode()
                response = h11.Response(
                    status_code=200,
                    headers=[
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(payload))),
                    ],
                )
                writer.write(conn.send(response))
                writer.write(conn.send(h11.Data(data=payload)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is not h11.DONE:
                    break
                conn.start_next_cycle()
            else:  # ConnectionClosed
                break
        writer.close()

    return handle


@dataclass
class Internet:
    servers: list[Server] = field(default_factory=list)

    async def serve(
        self,
        host: str,
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        *,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        label: str = "",
    ) -> Server:
        record: Server

        async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            record.accepted += 1
            with contextlib.suppress(OSError, h11.ProtocolError):
                await handler(reader, writer)
            writer.close()

        server = await asyncio.start_server(counted, host, port, ssl=tls)
        record = Server(label or host, server)
        self.servers.append(record)
        return record

    async def close(self) -> None:
        for record in self.servers:
            record.server.close()
            await record.server.wait_closed()


@pytest.fixture
async def internet() -> AsyncIterator[Internet]:
    world = Internet()
    yield world
    await world.close()


# --- the proxy and its sandboxes ---------------------------------------------------------------


@dataclass
class Harness:
    """A proxy with its world injected: policies, "kernel" destinations and DNS."""

    policies: dict[str, Egress] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)
    destinations: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    proxies: list[EgressProxy] = field(default_factory=list)
    clients: list[asyncio.StreamWriter] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def proxy(self) -> EgressProxy:
        return self.proxies[-1]

    async def start(self, **options) -> EgressProxy:
        async def resolve(name: str) -> list[str]:
            self.resolved.append(name)
            return list(self.names.get(name, ()))

        settings = {
            "blocked": [BLOCKED],
            "original_destination": lambda sock: self.destinations[sock.getpeername()],
            "resolve": resolve,
            "peek_timeout": 2.0,
        }
        settings.update(options)
        proxy = EgressProxy(self.policies.get, **settings)
        self.port = await proxy.start(PROXY_HOST, 0)
        self.proxies.append(proxy)
        return proxy

    async def connect(
        self,
        source: str,
        destination: tuple[str, int],
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection from sandbox `source` that the "kernel" redirected to the proxy,
        meant for `destination`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((source, 0))
        self.destinations[sock.getsockname()] = destination
        try:
            async with asyncio.timeout(WAIT):
                await asyncio.get_running_loop().sock_connect(sock, (PROXY_HOST, self.port))
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=tls, server_hostname=server_hostname
                )
        except BaseException:
            sock.close()
            raise
        self.clients.append(writer)
        return reader, writer

    async def settle(self, expected: int = 0) -> None:
        """Wait until the proxy holds `expected` connections (it must get there)."""
        async with asyncio.timeout(WAIT):
            while self.proxy.open_connections != expected:
                await asyncio.sleep(0.01)


@pytest.fixture
async def net() -> AsyncIterator[Harness]:
    harness = Harness()
    yield harness
    for writer in harness.clients:
        writer.transport.abort()
    # Every connection ends on its own once its client is gone: nothing leaks.
    for proxy in harness.proxies:
        async with asyncio.timeout(WAIT):
            while proxy.open_connections:
                await asyncio.sleep(0.01)
        await proxy.close()
        assert proxy.open_connections == 0


# --- clients -----------------------------------------------------------------------------------


class Http:
    """An HTTP/1.1 client over one connection (keep-alive)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self,
        host: str,
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        *,
        method: str = "GET",
        body: bytes = b"",
    ) -> dict:
        fields = [("Host", host), *headers]
        if method != "GET":
            fields.append(("Content-Length", str(len(body))))
        self.writer.write(self.conn.send(h11.Request(method=method, target="/", headers=fields)))
        if body:
            self.writer.write(self.conn.send(h11.Data(data=body)))
        self.writer.write(self.conn.send(h11.EndOfMessage()))
        await self.writer.drain()
        payload = await self.response()
        self.conn.start_next_cycle()
        return payload

    async def response(self) -> dict:
        payload = b""
        async with asyncio.timeout(WAIT):
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(await self.reader.read(1 << 16))
                elif isinstance(event, h11.Data):
                    payload += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return json.loads(payload)
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionError("closed before a response")


def header(answer: dict, name: str) -> list[str]:
    return [v for k, v in answer["headers"] if k.lower() == name.lower()]


async def refused(connecting: Awaitable) -> None:
    """`connecting` (a connection and its first exchange) ends in a TCP reset."""
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(WAIT):
            reader = await connecting
            while await reader.read(1 << 16):
                pass


async def read_all(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(WAIT):
        return await reader.read()


async def get(net: Harness, source: str, destination, host: str, **kwargs) -> dict:
    return await Http(*await net.connect(source, destination)).request(host, **kwargs)


async def send_first(net: Harness, source: str, destination, data: bytes):
    reader, writer = await net.connect(source, destination)
    writer.write(data)
    await writer.drain()
    return reader


# --- names -------------------------------------------------------------------------------------


async def test_an_allowed_sni_reaches_the_address_the_proxy_resolves(net, internet, web_ca):
    server = await internet.serve(TLS, _http("tls"), tls=web_ca.server(NAME))
    net.policies[SANDBOX] = domains(NAME)
    net.names[NAME] = [TLS]
    await net.start()

    # The sandbox "meant" an address where nothing listens: only the name leads there.
    reader, writer = await net.connect(
        SANDBOX, (NOWHERE, server.port), tls=web_ca.client(), server_hostname=NAME
    )
    answer = await Http(reader, writer).request(NAME)
    assert answer["server"] == "tls" and net.resolved == [NAME]
    # Passed through: the sandbox saw the server's own certificate.
    peer = writer.get_extra_info("peercert")
    assert ("DNS", NAME) in peer["subjectAltName"]


async def test_a_refused_sni_is_reset_and_never_reaches_a_server(net, internet, web_ca):
    server = await internet.serve(TLS, _http("tls"), tls=web_ca.server("evil.test"))
    net.policies[SANDBOX] = domains(NAME)
    net.names["evil.test"] = [TLS]
    await net.start()

    async def hello():
        reader, _ = await net.connect(
            SANDBOX, (TLS, server.port), tls=web_ca.client(), server_hostname="evil.test"
        )
        return reader

    await refused(hello())
    assert server.accepted == 0 and net.resolved == []


async def test_an_allowed_host_reaches_the_server_and_a_refused_one_is_reset(net, internet, caplog):
    server = await internet.serve(REAL, _http("real"))
    net.policies[SANDBOX] = domains(NAME)
    net.names.update({NAME: [REAL], "other.test": [REAL]})
    await net.start()

    answer = await get(net, SANDBOX, (NOWHERE, server.port), f"{NAME}:{server.port}")
    assert answer["server"] == "real" and server.accepted == 1

    caplog.set_level(logging.INFO, LOGGER)
    request = b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n"
    await refused(send_first(net, SANDBOX, (REAL, server.port), request))
    assert server.accepted == 1
    refusal = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusal and all(
        part in refusal[0] for part in (SANDBOX, "other.test", f"{REAL}:{server.port}")
    )


async def test_wildcards_match_subdomains_only_and_names_match_in_any_case(net, internet):
    server = await internet.serve(REAL, _http("real"))
    net.policies[SANDBOX] = domains("*.example.test")
    net.names.update({NAME: [REAL], "deep.api.example.test": [REAL], "example.test": [REAL]})
    await net.start()
    destination = (NOWHERE, server.port)

    assert (await get(net, SANDBOX, destination, "API.Example.TEST"))["server"] == "real"
    assert (await get(net, SANDBOX, destination, "deep.api.example.test."))["server"] == "real"
    await refused(
        send_first(net, SANDBOX, destination, b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
    )
    assert server.accepted == 2


async def test_a_spoofed_name_reaches_the_resolved_address_not_the_original_one(net, internet):
    real = await internet.serve(REAL, _http("real"))
    spoof = await internet.serve(SPOOF, _http("spoof"), port=real.port)
    # The spoofed address is even allowed by the address rules: the name still decides.
    net.policies[SANDBOX] = domains(NAME, allow=(SPOOF,), rules=RULES)
    net.names[NAME] = [REAL]
    await net.start()

    answer = await get(net, SANDBOX, (SPOOF, real.port), NAME)
    assert answer["server"] == "real"
    assert spoof.accepted == 0


async def test_an_address_literal_is_no_name(net, internet):
    server = await internet.serve(REAL, _http("real"))
    net.policies[SANDBOX] = domains("*")
    await net.start()

    # "*" allows every name, but an address in Host is not one: address rules apply.
    for host in (REAL, "0x7f.0.1.1", f"[::1]:{server.port}"):
        request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        await refused(send_first(net, SANDBOX, (REAL, server.port), request))
    assert server.accepted == 0 and net.resolved == []


async def test_a_request_head_in_pieces_is_waited_for(net, internet):
    server = await internet.serve(REAL, _http("real"))
    net.policies[SANDBOX] = domains(NAME)
    net.names[NAME] = [REAL]
    await net.start()

    reader, writer = await net.connect(SANDBOX, (NOWHERE, server.port))
    for piece in (b"GET / HTTP/1.1\r\nHo", f"st: {NAME}\r\n".encode(), b"\r\n"):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.05)  # separate segments, each a peek that is not enough
    client = Http(reader, writer)
    client.conn.send(h11.Request(method="GET", target="/", headers=[("Host", NAME)]))
    client.conn.send(h11.EndOfMessage())
    assert (await client.response())["server"] == "real"


async def test_an_incomplete_head_then_eof_has_no_name(net, internet):
    server = await internet.serve(REAL, _http("real"))
    net.policies[SANDBOX] = domains(NAME)
    net.names[NAME] = [REAL]
    await net.start(peek_timeout=0.1)

    async def cut_short():
        reader, writer = await net.connect(SANDBOX, (REAL, server.port))
        writer.write(f"GET / HTTP/1.1\r\nHost: {NAME}".encode())
        writer.write_eof()
        return reader

    await refused(cut_short())
    assert server.accepted == 0


# --- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rules", [None, RULES], ids=["no-transforms", "transforms"])
async def test_without_a_name_an_allowed_address_is_reached(net, internet, rules):
    server = await internet.serve(ECHO, _echo)
    net.policies[SANDBOX] = domains(NAME, allow=(ECHO,), rules=rules)
    await net.start()

    reader = await send_first(net, SANDBOX, (ECHO, server.port), b"\x00\x01ping")
    assert await reader.readexactly(6) == b"\x00\x01ping"


async def test_without_a_name_a_denied_address_is_reset(net, internet):
    server = await internet.serve(ECHO, _echo)
    net.policies[SANDBOX] = domains(NAME, allow=("127.0.1.200",))
    await net.start()

    await refused(send_first(net, SANDBOX, (ECHO, server.port), b"\x00\x01ping"))
    assert server.accepted == 0


async def test_blocked_addresses_are_never_reached(net, internet):
    inside = await internet.serve(INSIDE, _http("inside"))
    real = await internet.serve(REAL, _http("real"), port=inside.port)
    net.policies[SANDBOX] = domains(NAME, "rebound.test", allow=(str(BLOCKED),))
    net.names.update({"rebound.test": [INSIDE], NAME: [INSIDE, REAL]})
    await net.start()
    request = b"GET / HTTP/1.1\r\nHost: rebound.test\r\n\r\n"

    # A name resolving inside `blocked`, and a destination there the address rules allow.
    await refused(send_first(net, SANDBOX, (NOWHERE, inside.port), request))
    await refused(send_first(net, SANDBOX, (INSIDE, inside.port), b"\x00\x01ping"))
    assert inside.accepted == 0
    # Of a name's addresses, the blocked ones are skipped.
    assert (await get(net, SANDBOX, (NOWHERE, inside.port), NAME))["server"] == "real"
    assert inside.accepted == 0 and real.accepted == 1


async def test_a_connection_from_no_sandbox_is_reset(net, internet):
    server = await internet.serve(ECHO, _echo)
    net.policies[SANDBOX] = Egress()  # everything allowed, for SANDBOX only
    await net.start()

    await refused(send_first(net, STRANGER, (ECHO, server.port), b"\x00\x01ping"))
    assert server.accepted == 0 and net.proxy.open_connections == 0
    reader = await send_first(net, SANDBOX, (ECHO, server.port), b"\x00\x01ping")
    assert await reader.readexactly(6) == b"\x00\x01ping"


async def test_a_connection_without_an_original_destination_is_reset(net, internet):
    server = await internet.serve(ECHO, _echo)
    net.policies[SANDBOX] = Egress()
    await net.start(original_destination=original_destination)  # no NAT on loopback

    await refused(send_first(net, SANDBOX, (ECHO, server.port), b"\x00\x01ping"))
    assert server.accepted == 0


async def test_the_sandboxs_side_does_not_wait_to_coalesce_writes(net, internet):
    server = await internet.serve(ECHO, _echo)
    net.policies[SANDBOX] = Egress()
    nodelay = []

    def destination(sock: socket.socket) -> tuple[str, int]:
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return net.destinations[sock.getpeername()]

    await net.start(original_destination=destination)
    reader = await send_first(net, SANDBOX, (ECHO, server.port), b"\x00ping")
    assert await reader.readexactly(5) == b"\x00ping"
    assert nodelay and all(nodelay)  # no Nagle delay on a response written in pieces


def test_original_destination_reads_netfilters_sockaddr() -> None:
    class Redirected:
        def getsockopt(self, level: int, option: int, size: int) -> bytes:
            assert (level, option, size) == (socket.SOL_IP, 80, 16)
            return struct.pack("=H", socket.AF_INET) + struct.pack(
                "!H4s8x", 8443, socket.inet_aton("203.0.113.7")
            )

    assert original_destination(Redirected()) == ("203.0.113.7", 8443)  # type: ignore[arg-type]


# --- servers that speak first ------------------------------------------------------------------


async def test_a_silent_client_falls_back_to_the_address_rules_after_the_peek(net, internet):
    banner = await internet.serve(BANNER, _banner)
    # Transforms make the proxy look for a name on every connection.
    net.policies[SANDBOX] = domains(NAME, allow=(BANNER,), rules=RULES)
    net.policies[OTHER_SANDBOX] = domains(NAME, rules=RULES)
    await net.start(peek_timeout=0.05)

    reader, writer = await net.connect(SANDBOX, (BANNER, banner.port))
    async with asyncio.timeout(WAIT):
        assert await reader.readline() == b"SSH-2.0-hearth-test\r\n"
    writer.write(b"hello\n")
    assert await reader.readexactly(6) == b"hello\n"

    async def silent():
        reader, _ = await net.connect(OTHER_SANDBOX, (BANNER, banner.port))
        return reader

    await refused(silent())
    assert banner.accepted == 1


# --- splicing ----------------------------------------------------------------------------------


async def test_a_client_that_half_closes_still_gets_the_whole_answer(net, internet):
    echo = await internet.serve(ECHO, _echo)
    net.policies[SANDBOX] = domains(NAME, allow=(ECHO,))
    await net.start()

    reader, writer = await net.connect(SANDBOX, (ECHO, echo.port))
    writer.write(b"\x00ping")
    writer.write_eof()
    assert await read_all(reader) == b"\x00ping"


@pytest.mark.parametrize("rules", [None, RULES], ids=["spliced", "transformed"])
async def test_an_http_client_that_half_closes_after_its_request_gets_the_answer(
    net, internet, rules
):
    server = await internet.serve(REAL, _http("real"))
    net.policies[SANDBOX] = domains(NAME, rules=rules)
    net.names[NAME] = [REAL]
    await net.start()

    reader, writer = await net.connect(SANDBOX, (NOWHERE, server.port))
    writer.write(
        f"POST / HTTP/1.1\r\nHost: {NAME}\r\nContent-Length: 4\r\n"
        "Authorization: Bearer sandbox\r\n\r\nping".encode()
    )
    writer.write_eof()
    raw = await read_all(reader)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    answer = json.loads(body)
    assert answer["digest"] == hashlib.sha256(b"ping").hexdigest()
    expected = ["Bearer real-secret"] if rules else ["Bearer sandbox"]
    assert header(answer, "authorization") == expected


async def test_a_large_transfer_arrives_intact_both_ways(net, internet):
    echo = await internet.serve(ECHO, _echo)
    net.policies[SANDBOX] = domains(NAME, allow=(ECHO,))
    await net.start()
    data = bytes(range(256)) * (32 * 1024)  # 8 MiB: the send buffers fill and pause reading

    reader, writer = await net.connect(SANDBOX, (ECHO, echo.port))

    async def send() -> None:
        writer.write(data)
        await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send())
    received = await read_all(reader)
    await sending
    assert received == data


# --- transforms --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [Egress.parse(rules=RULES), domains(NAME, rules=RULES)],
    ids=["transforms-only", "domains-and-transforms"],
)
async def test_transforms_set_headers_on_every_request_of_a_connection(net, internet, policy):
    real = await internet.serve(REAL, _http("real"))
    spoof = await internet.serve(SPOOF, _http("spoof"), port=real.port)
    net.policies[SANDBOX] = policy
    net.names[NAME] = [REAL]
    await net.start()

    # The sandbox says the name is at SPOOF (allowed by the address rules, when the policy
    # has no domains): the secret must still only go where the name points.
    client = Http(*await net.connect(SANDBOX, (SPOOF, real.port)))
    for _ in range(2):
        answer = await client.request(NAME, [("authorization", "Bearer sandbox"), ("X-Mine", "a")])
        assert answer["server"] == "real"
        assert header(answer, "Authorization") == ["Bearer real-secret"]
        assert header(answer, "X-Hearth") == ["1"] and header(answer, "X-Mine") == ["a"]
    big = bytes(range(256)) * 4096
    answer = await client.request(NAME, method="POST", body=big)
    assert answer["length"] == len(big) and answer["digest"] == hashlib.sha256(big).hexdigest()
    assert header(answer, "Authorization") == ["Bearer real-secret"]
    assert real.accepted == 1 and spoof.accepted == 0


async def test_names_without_transforms_are_left_alone(net, internet):
    server = await internet.serve(REAL, _http("real"))
    net.policies[SANDBOX] = Egress.parse(rules=RULES)
    await net.start()

    answer = await get(
        net, SANDBOX, (REAL, server.port), "other.test", headers=[("Authorization", "mine")]
    )
    assert header(answer, "Authorization") == ["mine"] and header(answer, "X-Hearth") == []


async def test_transforms_apply_inside_tls_with_the_local_ca(net, internet, proxy_ca, web_ca):
    server = await internet.serve(TLS, _http("tls"), tls=web_ca.server(NAME))
    net.policies[SANDBOX] = Egress.parse(rules=RULES)
    net.names[NAME] = [TLS]
    await net.start(tls_for=proxy_ca.server, upstream_tls=web_ca.client())

    reader, writer = await net.connect(
        SANDBOX,
        (NOWHERE, server.port),
        tls=proxy_ca.client(alpn=["h2", "http/1.1"]),
        server_hostname=NAME,
    )
    tls = writer.get_extra_info("ssl_object")
    assert tls.selected_alpn_protocol() == "http/1.1"
    issuer = dict(x[0] for x in tls.getpeercert()["issuer"])["commonName"]
    assert issuer == proxy_ca.common_name  # the proxy's certificate, not the site's
    client = Http(reader, writer)
    for _ in range(2):
        answer = await client.request(NAME, [("Authorization", "Bearer sandbox")])
        assert answer["server"] == "tls"
        assert header(answer, "Authorization") == ["Bearer real-secret"]
    assert server.accepted == 1


async def test_an_upstream_the_proxy_cannot_verify_is_not_reached(net, internet, proxy_ca):
    impostor = CA(proxy_ca.directory / "impostor")
    server = await internet.serve(TLS, _http("tls"), tls=impostor.server(NAME))
    net.policies[SANDBOX] = Egress.parse(rules=RULES)
    net.names[NAME] = [TLS]
    await net.start(tls_for=proxy_ca.server, upstream_tls=proxy_ca.client())

    async def hello():
        reader, _ = await net.connect(
            SANDBOX, (NOWHERE, server.port), tls=proxy_ca.client(), server_hostname=NAME
        )
        return reader

    await refused(hello())


async def test_without_a_local_ca_tls_passes_through_untouched(net, internet, web_ca, caplog):
    server = await internet.serve(TLS, _http("tls"), tls=web_ca.server(NAME))
    net.policies[SANDBOX] = Egress.parse(rules=RULES)
    net.names[NAME] = [TLS]
    await net.start()
    caplog.set_level(logging.WARNING, LOGGER)

    for _ in range(2):
        reader, writer = await net.connect(
            SANDBOX, (NOWHERE, server.port), tls=web_ca.client(), server_hostname=NAME
        )
        answer = await Http(reader, writer).request(NAME, [("Authorization", "mine")])
        assert answer["server"] == "tls" and header(answer, "Authorization") == ["mine"]
    assert len([r for r in caplog.records if "untouched" in r.getMessage()]) == 1


async def test_an_upgraded_connection_becomes_a_tunnel(net, internet):
    server = await internet.serve(REAL, _http("real"))
    net.policies[SANDBOX] = Egress.parse(rules=RULES)
    net.names[NAME] = [REAL]
    await net.start()

    reader, writer = await net.connect(SANDBOX, (NOWHERE, server.port))
    writer.write(
        f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n".encode()
    )
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    seen = json.loads(
        next(line for line in head.split(b"\r\n") if line.startswith(b"X-Seen")).split(b": ", 1)[1]
    )
    assert ["Authorization", "Bearer real-secret"] in seen
    writer.write(b"\x00raw bytes")
    assert await reader.readexactly(10) == b"\x00raw bytes"


# --- policy changes and closing ----------------------------------------------------------------


async def test_cut_closes_what_the_new_policy_forbids_and_keeps_the_rest(net, internet):
    server = await internet.serve(REAL, _http("real"))
    both = domains("a.example.test", "b.example.test")
    net.policies.update(
        {SANDBOX: both, OTHER_SANDBOX: both, THIRD_SANDBOX: Egress.parse(rules=RULES)}
    )
    net.names.update({"a.example.test": [REAL], "b.example.test": [REAL], NAME: [REAL]})
    await net.start()
    destination = (NOWHERE, server.port)

    a = Http(*await net.connect(SANDBOX, destination))
    b = Http(*await net.connect(SANDBOX, destination))
    other_b = Http(*await net.connect(OTHER_SANDBOX, destination))
    transformed = Http(*await net.connect(THIRD_SANDBOX, destination))
    for client, host in (
        (a, "a.example.test"),
        (b, "b.example.test"),
        (other_b, "b.example.test"),
        (transformed, NAME),
    ):
        assert (await client.request(host))["server"] == "real"
    assert net.proxy.open_connections == 4

    net.policies[SANDBOX] = domains("a.example.test")
    net.proxy.cut(SANDBOX)
    with pytest.raises(ConnectionResetError):
        await b.request("b.example.test")
    assert (await a.request("a.example.test"))["server"] == "real"
    assert (await other_b.request("b.example.test"))["server"] == "real"

    # Another secret for the same name: the connection carrying the old one goes.
    net.policies[THIRD_SANDBOX] = Egress.parse(
        rules={NAME: [{"transform": {"headers": {"Authorization": "Bearer rotated"}}}]}
    )
    net.proxy.cut(THIRD_SANDBOX)
    with pytest.raises(ConnectionResetError):
        await transformed.request(NAME)
    await net.settle(2)

    del net.policies[SANDBOX]  # the sandbox is gone
    net.proxy.cut(SANDBOX)
    with pytest.raises(ConnectionResetError):
        await a.request("a.example.test")
    await net.settle(1)
    assert (await other_b.request("b.example.test"))["server"] == "real"


async def test_cut_during_a_peek_closes_the_connection(net, internet):
    banner = await internet.serve(BANNER, _banner)
    net.policies[SANDBOX] = domains(NAME, allow=(BANNER,), rules=RULES)
    await net.start(peek_timeout=30.0)

    reader, _ = await net.connect(SANDBOX, (BANNER, banner.port))
    await net.settle(1)
    del net.policies[SANDBOX]
    net.proxy.cut(SANDBOX)
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(WAIT):
            await reader.read()
    assert banner.accepted == 0


async def test_close_closes_every_connection(net, internet):
    echo = await internet.serve(ECHO, _echo)
    banner = await internet.serve(BANNER, _banner)
    net.policies[SANDBOX] = domains(NAME, allow=(ECHO, BANNER), rules=RULES)
    await net.start(peek_timeout=30.0)

    spliced = await send_first(net, SANDBOX, (ECHO, echo.port), b"\x00ping")
    assert await spliced.readexactly(5) == b"\x00ping"
    peeking, _ = await net.connect(SANDBOX, (BANNER, banner.port))
    await net.settle(2)

    await net.proxy.close()
    assert net.proxy.open_connections == 0
    for reader in (spliced, peeking):
        with contextlib.suppress(ConnectionResetError):
            assert await read_all(reader) == b""
    with pytest.raises(OSError):
        await net.connect(SANDBOX, (ECHO, echo.port))


# --- resolvers ---------------------------------------------------------------------------------


class _Dns(asyncio.DatagramProtocol):
    """A DNS server answering A queries from a table, NXDOMAIN otherwise."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        name = query.question[0].name.to_text(omit_final_dot=True)
        if name in self.table:
            response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", self.table[name]))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(response.to_wire(), addr)


async def test_nameservers_resolve_names(net, internet):
    server = await internet.serve(REAL, _http("real"))
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Dns({NAME: REAL}), local_addr=("127.0.4.53", 0)
    )
    try:
        port = transport.get_extra_info("sockname")[1]
        net.policies[SANDBOX] = domains("*.example.test")
        await net.start(resolve=None, nameservers=[f"127.0.4.53:{port}"])

        assert (await get(net, SANDBOX, (NOWHERE, server.port), NAME))["server"] == "real"
        request = b"GET / HTTP/1.1\r\nHost: missing.example.test\r\n\r\n"
        await refused(send_first(net, SANDBOX, (REAL, server.port), request))
    finally:
        transport.close()


async def test_without_nameservers_the_hosts_resolver_is_used(net, internet):
    server = await internet.serve("127.0.0.1", _http("localhost"))
    net.policies[SANDBOX] = domains("localhost")
    await net.start(resolve=None)

    answer = await get(net, SANDBOX, (NOWHERE, server.port), "localhost")
    assert answer["server"] == "localhost"


# --- sniffing ----------------------------------------------------------------------------------


def _client_hello(name: str | None) -> bytes:
    tls = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=name
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_sniff_reads_a_client_hellos_server_name() -> None:
    hello = _client_hello("API.Example.test")
    assert _sniff.sniff(hello[:60], limit=16384) is None  # not complete yet
    assert _sniff.sniff(hello, limit=16384) == _sniff.Hello("tls", NAME)
    assert _sniff.sniff(_client_hello(None), limit=16384) == _sniff.Hello("tls", None)
    assert _sniff.sniff(b"\x16\x03\x01\x00\x05hello", limit=16384) == _sniff.Hello("tls", None)


def test_sniff_reads_an_http_host() -> None:
    def sniff(data: bytes):
        return _sniff.sniff(data, limit=16384)

    assert sniff(b"GET / HTTP/1.1\r\nHost: x.test:8080\r\n\r\n") == _sniff.Hello("http", "x.test")
    assert sniff(b"GET / HTTP/1.1\r\nHost: x.te") is None
    assert sniff(b"GE") is None
    assert sniff(b"GET / HTTP/1.0\r\n\r\n") == _sniff.Hello("http", None)
    assert sniff(b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n") == _sniff.Hello("http", None)
    assert sniff(b"SSH-2.0-OpenSSH_9.6\r\n") == _sniff.UNKNOWN
    assert sniff(b"hello") == _sniff.UNKNOWN
    assert sniff(b"\x00\x00\x00\x08") == _sniff.UNKNOWN
    assert _sniff.sniff(b"GET / HTTP/1.1\r\nX: " + b"a" * 100, limit=64) == _sniff.UNKNOWN
