"""The gateway against real loopback servers standing in for a sandbox and the API.

Streaming is checked by handshakes, not timings: the upstream sends its second part only
after the client has received the first (and the client sends its second part only
after the upstream has seen the first), so a gateway that buffered would deadlock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import httpx
import pytest
import uvicorn
from proxy.directory import Directory, Route  # tests/proxy

from hearth.node.interface import SandboxAddress
from hearth.proxy import Gateway, listen

SANDBOX = "sbxone"
SECURED = "sbxsecure"
MASKED = "sbxmasked"
TOKEN = "envd-token"
TRAFFIC = "traffic-token"
MiB = 1 << 20


class Upstream:
    """The sandbox's server: an ASGI app with hooks the tests synchronize on."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: dict[str, object] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path = scope["path"]
        if path == "/stream":
            await self._stream(send)
        elif path == "/release":
            self.release.set()
            await _reply(send, 200, b"released")
        elif path == "/seen":
            await _reply(send, 200, repr(sorted(self.seen.items())).encode())
        elif path == "/upload":
            await self._upload(receive, send)
        elif path == "/download":
            await self._download(scope, send)
        elif path == "/watch":
            await self._watch(receive, send)
        elif path == "/early":  # answers without reading the body (as a 401 would)
            await _reply(send, 401, b"no")
        else:
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            body = f"{scope['method']} {path} host={headers.get('host')}".encode()
            await _reply(send, 200, body)

    async def _stream(self, send) -> None:
        self.release.clear()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        await self.release.wait()
        await send({"type": "http.response.body", "body": b"second\n"})

    async def _upload(self, receive, send) -> None:
        digest, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            self.seen["upload"] = size
            if not message.get("more_body"):
                break
        await _reply(send, 200, f"{size} {digest.hexdigest()}".encode())

    async def _download(self, scope, send) -> None:
        size = int(scope["query_string"].decode().partition("=")[2])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        block = _block()
        for offset in range(0, size, len(block)):
            part = block[: min(len(block), size - offset)]
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _watch(self, receive, send) -> None:
        """A stream that runs until the client goes away, and records that it did."""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"watching\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        self.seen["disconnected"] = True


def _block() -> bytes:
    return hashlib.sha256(b"hearth").digest() * (MiB // 32)


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _reply(send, status: int, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _api(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await _reply(send, 200 if scope["path"] == "/health" else 404, f"api {scope['path']}".encode())


async def _raw_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Upgrades to an echo (`/ws`), or dies in the middle of a response (`/die`)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if head.startswith(b"GET /ws "):
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
        )
        writer.write(b"hello from the other side\n")
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    else:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
    writer.close()


@dataclass
class Env:
    url: str
    proxy_url: str
    upstream: Upstream
    directory: Directory


def _serve_uvicorn(app, sock: socket.socket) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    server.capture_signals = _no_signals  # type: ignore[method-assign]
    asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    return server


class _no_signals:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        holder["stop"] = (loop, stop)
        upstream = Upstream()
        up_sock = listen("127.0.0.1", 0)
        servers = [_serve_uvicorn(upstream, up_sock)]
        api_name = f"\0hearth-test-api-{id(upstream)}"
        api_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        api_sock.bind(api_name)
        api_sock.listen()
        servers.append(_serve_uvicorn(_api, api_sock))
        raw = await asyncio.start_server(_raw_upstream, "127.0.0.1", 0)
        raw_port = raw.sockets[0].getsockname()[1]
        closed = listen("127.0.0.1", 0)
        closed_port = closed.getsockname()[1]
        closed.close()
        up_port = up_sock.getsockname()[1]
        ports = {49983: up_port, 8080: up_port, 7000: raw_port, 9999: closed_port}
        directory = Directory(
            {
                SANDBOX: Route(SandboxAddress("127.0.0.1", ports)),
                SECURED: Route(SandboxAddress("127.0.0.1", ports), TOKEN, TRAFFIC),
                MASKED: Route(SandboxAddress("127.0.0.1", ports), None, None, "inner:${PORT}"),
            }
        )
        gateway = Gateway(directory, domains=("example.test",), api_socket=api_name)
        proxy_only = Gateway(directory)
        front = await asyncio.start_server(gateway.handle, sock=listen("127.0.0.1", 0))
        back = await asyncio.start_server(proxy_only.handle, sock=listen("127.0.0.1", 0))
        while not all(s.started for s in servers):
            await asyncio.sleep(0.01)
        holder["env"] = Env(
            url=f"http://127.0.0.1:{front.sockets[0].getsockname()[1]}",
            proxy_url=f"http://127.0.0.1:{back.sockets[0].getsockname()[1]}",
            upstream=upstream,
            directory=directory,
        )
        ready.set()
        await stop.wait()
        for listener in (front, back, raw):
            listener.close()
        await gateway.aclose()
        await proxy_only.aclose()
        for server in servers:
            server.should_exit = True
        await asyncio.sleep(0.2)

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield holder["env"]  # type: ignore[misc]
    loop, stop = holder["stop"]  # type: ignore[misc]
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)


def _to(sandbox_id: str, port: int = 49983) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(port)}


def test_routes_by_headers_and_host(env: Env) -> None:
    with httpx.Client(base_url=env.url, timeout=10) as client:
        assert client.get("/health").text == "api /health"
        assert client.get("/x", headers=_to(SANDBOX)).text.startswith("GET /x host=127.0.0.1")
        by_host = client.get("/y", headers={"Host": f"8080-{SANDBOX}.example.test"})
        assert by_host.text == f"GET /y host=8080-{SANDBOX}.example.test"
        assert client.get("/y", headers={"Host": "api.example.test"}).text == "api /y"
        assert client.get("/y", headers={"Host": f"8080-{SANDBOX}.other.test"}).text == "api /y"


def test_mask_request_host(env: Env) -> None:
    with httpx.Client(base_url=env.url, timeout=10) as client:
        assert client.get("/m", headers=_to(MASKED, 8080)).text == "GET /m host=inner:8080"


def test_proxy_only_listener(env: Env) -> None:
    with httpx.Client(base_url=env.proxy_url, timeout=10) as client:
        response = client.get("/", headers={"Host": "nodots"})
        assert (response.status_code, response.text) == (400, "Invalid host\n")
        response = client.get("/z", headers={"Host": f"49983-{SANDBOX}.anything.example"})
        assert response.text == f"GET /z host=49983-{SANDBOX}.anything.example"
        assert client.get("/z", headers=_to(SANDBOX)).status_code == 200


def test_closed_and_unmapped_ports(env: Env) -> None:
    with httpx.Client(base_url=env.url, timeout=10) as client:
        for port in (9999, 5432):  # refused; and a host port the sandbox does not map
            response = client.get("/", headers=_to(SANDBOX, port))
            assert response.status_code == 502
            assert response.json() == {
                "sandboxId": SANDBOX,
                "message": "The sandbox is running but port is not open",
                "port": port,
                "code": 502,
            }


def test_traffic_token_only_off_envd(env: Env) -> None:
    with httpx.Client(base_url=env.url, timeout=10) as client:
        assert client.get("/a", headers=_to(SECURED)).status_code == 200  # envd's port
        assert client.get("/a", headers=_to(SECURED, 8080)).status_code == 403
        token = {"e2b-traffic-access-token": TRAFFIC}
        assert client.get("/a", headers={**_to(SECURED, 8080), **token}).status_code == 200


def test_refusals_keep_the_connection(env: Env) -> None:
    with httpx.Client(base_url=env.url, timeout=10) as client:
        gone = client.post("/x", headers=_to("nosuchsandbox"), content=b"x" * 100_000)
        assert gone.status_code == 502 and gone.json()["message"] == "The sandbox was not found"
        reserved = client.post("/init/", headers=_to(SANDBOX), json={"accessToken": "x"})
        assert reserved.status_code == 404
        assert reserved.json()["path"] == "/init/"
        assert client.get("/health").text == "api /health"
        assert client.get("/after", headers=_to(SANDBOX)).status_code == 200


def test_response_streams_without_buffering(env: Env) -> None:
    with (
        httpx.Client(base_url=env.url, timeout=10) as client,
        client.stream("GET", "/stream", headers=_to(SANDBOX)) as response,
    ):
        chunks = response.iter_raw()
        assert next(chunks) == b"first\n"
        # The second part exists only once the first has reached us.
        assert httpx.get(f"{env.url}/release", headers=_to(SANDBOX)).text == "released"
        assert b"".join(chunks) == b"second\n"


def test_request_streams_without_buffering(env: Env) -> None:
    def body() -> Iterator[bytes]:
        yield b"a" * 1000
        # Wait until the upstream has the first part: a buffering gateway never sends it.
        with httpx.Client(base_url=env.url, headers=_to(SANDBOX), timeout=10) as probe:
            while "('upload', 1000)" not in probe.get("/seen").text:
                pass
        yield b"b" * 1000

    with httpx.Client(base_url=env.url, timeout=10) as client:
        response = client.post("/upload", content=body(), headers=_to(SANDBOX))
        expected = hashlib.sha256(b"a" * 1000 + b"b" * 1000).hexdigest()
        assert response.text == f"2000 {expected}"


def test_hundred_megabytes_each_way(env: Env) -> None:
    size = 100 * MiB
    block = _block()

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    expected = hashlib.sha256()
    for _ in range(size // len(block)):
        expected.update(block)
    with httpx.Client(base_url=env.url, timeout=60) as client:
        response = client.post("/upload", content=body(), headers=_to(SANDBOX))
        assert response.text == f"{size} {expected.hexdigest()}"
        digest, received = hashlib.sha256(), 0
        with client.stream("GET", f"/download?size={size}", headers=_to(SANDBOX)) as stream:
            for chunk in stream.iter_raw():
                digest.update(chunk)
                received += len(chunk)
        assert (received, digest.hexdigest()) == (size, expected.hexdigest())


@pytest.mark.parametrize("size", [1000, 5 * MiB])
def test_answer_before_the_body_ends(env: Env, size: int) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(0, size, 1000):
            yield b"x" * 1000

    with httpx.Client(base_url=env.url, timeout=10) as client:
        response = client.post("/early", content=body(), headers=_to(SANDBOX))
        assert (response.status_code, response.text) == (401, "no")
        assert client.get("/after", headers=_to(SANDBOX)).status_code == 200


def test_client_hang_up_reaches_the_upstream(env: Env) -> None:
    env.upstream.seen.pop("disconnected", None)
    with (
        httpx.Client(base_url=env.url, timeout=10) as client,
        client.stream("GET", "/watch", headers=_to(SANDBOX)) as response,
    ):
        assert next(response.iter_raw()) == b"watching\n"
    with httpx.Client(base_url=env.url, headers=_to(SANDBOX), timeout=10) as probe:
        while "disconnected" not in probe.get("/seen").text:
            pass


def test_upstream_dying_mid_response_breaks_the_response(env: Env) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{env.url}/die", headers=_to(SANDBOX, 7000), timeout=10)


def _raw_request(env: Env, head: bytes) -> socket.socket:
    """A socket to the gateway that has sent `head` (a request line and headers)."""
    port = int(env.url.rsplit(":", 1)[1])
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(head)
    return conn


def _receive_until(conn: socket.socket, done) -> bytes:
    received = b""
    while not done(received):
        received += conn.recv(65536)
    return received


def test_upgrade_is_spliced(env: Env) -> None:
    head = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: " + SANDBOX.encode() + b"\r\n"
        b"E2b-Sandbox-Port: 7000\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
    )
    with _raw_request(env, head) as conn:
        received = _receive_until(conn, lambda r: b"hello from the other side\n" in r)
        answer, _, rest = received.partition(b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 101")
        assert b"upgrade: echo" in answer.lower()
        assert rest == b"hello from the other side\n"
        conn.sendall(b"ping")
        assert _receive_until(conn, lambda r: len(r) >= 4) == b"PING"
        conn.shutdown(socket.SHUT_WR)  # the half-close goes through; then the far end closes
        assert conn.recv(65536) == b""


def test_expect_100_continue(env: Env) -> None:
    head = (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: " + SANDBOX.encode() + b"\r\n"
        b"E2b-Sandbox-Port: 49983\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    with _raw_request(env, head) as conn:
        assert _receive_until(conn, lambda r: b"\r\n\r\n" in r).startswith(b"HTTP/1.1 100")
        conn.sendall(b"hello")  # only now: the client waited for the 100
        digest = hashlib.sha256(b"hello").hexdigest().encode()
        assert _receive_until(conn, lambda r: r.endswith(digest)).startswith(b"HTTP/1.1 200")


def test_signed_files_url_finds_its_sandbox(env: Env) -> None:
    def signed(path: str, operation: str, token: str) -> str:
        raw = f"{path}:{operation}::{token}:4102444800"
        digest = base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=").decode()
        query = {"path": path, "signature": f"v1_{digest}", "signature_expiration": "4102444800"}
        return "/files?" + urlencode(query, quote_via=quote)  # as the SDK spells it

    with httpx.Client(base_url=env.url, timeout=10) as client:
        assert client.get(signed("a.txt", "read", TOKEN)).text.startswith("GET /files")
        assert client.post(signed("a.txt", "write", TOKEN)).text.startswith("POST /files")
        # A signature no sandbox's token makes is not a sandbox's request.
        assert client.get(signed("a.txt", "read", "other")).text == "api /files"
        assert client.get(signed("a.txt", "write", TOKEN)).text == "api /files"
