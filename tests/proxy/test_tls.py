"""https on `hearth serve`'s one port: the local CA (`hearth.tls`), the listener that
tells TLS from plain HTTP by the first byte, and everything the gateway does, over TLS.

The CA's own tests need no server. The others run a real container-runtime `hearth
serve` (every port of a sandbox is reachable through it) and reach sandbox hosts by
their names, as `https://{sandbox.get_host(port)}` does at E2B: `*.localhost` resolves
to this machine through libnss-myhostname (scripts/setup.sh installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from api.conftest import npm_installed, serve_containers  # tests/api
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hearth import config
from hearth.proxy import Listener, listen
from hearth.tls import TRUST_FILE_PREFIX, LocalCA, TrustStore, certificate_context

ROOT = Path(__file__).parents[2]
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# --- the local CA, alone ---------------------------------------------------------------


def test_the_ca_is_made_once_and_its_key_kept_private(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    ca = LocalCA.load_or_create(directory)
    again = LocalCA.load_or_create(directory)
    assert again.fingerprint == ca.fingerprint
    assert ca.cert_path == directory / "ca.pem"
    assert ca.cert_path.read_text() == ca.cert_pem
    assert (directory / "ca.key").stat().st_mode & 0o777 == 0o600
    assert ca.cert_path.stat().st_mode & 0o777 == 0o644
    cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # A key that is not the certificate's makes a new CA rather than bad leaves.
    (directory / "ca.key").write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert LocalCA.load_or_create(directory).fingerprint != ca.fingerprint


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, sni: str | None) -> ssl.SSLObject:
    """A TLS handshake between the two contexts in memory; the client's end."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    ours = client.wrap_bio(to_client, to_server, server_hostname=sni)
    theirs = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        for end in (ours, theirs):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        server_in.write(to_server.read())
        to_client.write(server_out.read())
    ours.do_handshake()  # raises if it failed
    return ours


def _strict_client(ca: LocalCA) -> ssl.SSLContext:
    """Python's default verification, strict as Python 3.13 makes it, trusting `ca`."""
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    client.set_alpn_protocols(["h2", "http/1.1"])
    return client


def test_a_leaf_names_exactly_the_host_asked_for(tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(tmp_path)
    client = _strict_client(ca)
    host = "49983-abcdefghij0123456789.localhost"
    end = _handshake(ca.server_context(host), client, host)
    assert end.getpeercert()["subjectAltName"] == (("DNS", host),)
    assert end.selected_alpn_protocol() == "http/1.1"  # never h2: the gateway is HTTP/1.1
    assert ca.server_context(host.upper() + ".") is ca.server_context(host)  # cached
    with pytest.raises(ssl.SSLCertVerificationError, match="not valid for '1-other.localhost'"):
        _handshake(ca.server_context(host), client, "1-other.localhost")
    with pytest.raises(ValueError):
        ca.server_context("not a name")


def test_the_listener_context_follows_sni(tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(tmp_path)
    client = _strict_client(ca)
    listener = ca.sni_context("127.0.0.1")
    assert ca.sni_context("::ffff:127.0.0.1") is listener
    for host in ("localhost", "8000-sbx.localhost", "8000-sbx.sandboxes.example.com"):
        end = _handshake(listener, client, host)
        assert end.getpeercert()["subjectAltName"] == (("DNS", host),)
        assert end.selected_alpn_protocol() == "http/1.1"
    # A client of an IP address sends no SNI: it gets the leaf of the address.
    client.check_hostname = False
    end = _handshake(listener, client, None)
    assert ipaddress.ip_address("127.0.0.1") in _ip_names(end.getpeercert(binary_form=True))


def _ip_names(der: bytes | None) -> list[object]:
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return names.get_values_for_type(x509.IPAddress)


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.headers["Host"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[LocalCA, int]]:
    """An HTTPS server on loopback with the CA's listener context."""
    ca = LocalCA.load_or_create(tmp_path / "tls")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.socket = ca.sni_context("127.0.0.1").wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ca, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_curl_verifies_the_leaves(tls_server: tuple[LocalCA, int]) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    ca, port = tls_server
    host = "49983-abc.localhost"
    done = subprocess.run(
        ["curl", "-sS", "--cacert", str(ca.cert_path), "--resolve", f"{host}:{port}:127.0.0.1"]
        + [f"https://{host}:{port}/"],
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout) == (0, f"{host}:{port}"), done.stderr


def test_node_verifies_the_leaves(tls_server: tuple[LocalCA, int]) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    ca, port = tls_server
    script = """
    const https = require("https");
    const lookup = (host, options, done) =>
      options.all ? done(null, [{ address: "127.0.0.1", family: 4 }]) : done(null, "127.0.0.1", 4);
    https.get({ hostname: "8080-sbx.localhost", port: process.argv[1], path: "/", lookup }, (r) => {
      let body = "";
      r.on("data", (d) => (body += d));
      r.on("end", () => console.log(r.statusCode, body));
    }).on("error", (e) => { console.error(e.message); process.exit(1); });
    """
    done = subprocess.run(
        ["node", "-e", script, str(port)],
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(ca.cert_path)},
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"200 8080-sbx.localhost:{port}"), (
        done.stderr
    )


# --- the listener, alone ----------------------------------------------------------------


async def test_the_listener_hands_over_whole_connections_and_drops_quiet_ones() -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.put_nowait(await reader.readexactly(14))
        writer.close()

    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    listener = Listener(sock, handle)  # no TLS context: plain HTTP only
    listener.start()
    try:
        _, plain = await asyncio.open_connection("127.0.0.1", port)
        plain.write(b"GET / HTTP/1.1")
        assert await received.get() == b"GET / HTTP/1.1"  # the peeked byte included
        # A handshake where there is no TLS is refused like any other garbage.
        tls_reader, tls_writer = await asyncio.open_connection("127.0.0.1", port)
        tls_writer.write(b"\x16\x03\x01")
        assert (await tls_reader.read()).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        quiet, _ = await asyncio.open_connection("127.0.0.1", port)  # sends nothing
    finally:
        listener.close()
        await listener.wait_closed()  # does not wait for the quiet one's first byte
    assert await quiet.read() == b""
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


# --- the trust store --------------------------------------------------------------------


def _fake_store(tmp_path: Path) -> tuple[TrustStore, Path]:
    """A trust store whose update command rebuilds its bundle from its anchors, as
    update-ca-certificates does, and counts its runs."""
    anchors, bundle, runs = tmp_path / "anchors", tmp_path / "bundle.crt", tmp_path / "runs"
    links = tmp_path / "links"
    anchors.mkdir()
    links.mkdir()
    update = tmp_path / "update"
    update.write_text(
        "#!/bin/sh\n"
        f"cat {anchors}/*.crt > {bundle} 2>/dev/null || : > {bundle}\n"
        # Links to what is there, the old ones left (update-ca-certificates leaves them).
        f"for f in {anchors}/*.crt; do [ -e $f ] && ln -sf $f {links}/$(basename $f .crt).pem"
        "; done\n"
        f"echo >> {runs}\n"
    )
    update.chmod(0o755)
    return TrustStore(anchors, (str(update),), bundle, links), runs


def test_install_adds_the_ca_once(tmp_path: Path) -> None:
    store, runs = _fake_store(tmp_path)
    ca = LocalCA.load_or_create(tmp_path / "tls")
    assert not ca.trusted(store)
    assert ca.install(store)
    installed = store.anchors / f"{TRUST_FILE_PREFIX}{ca.fingerprint[:16]}.crt"
    assert installed.read_text() == ca.cert_pem
    assert installed.stat().st_mode & 0o777 == 0o644
    assert ca.trusted(store)
    assert ca.install(store)  # there already: nothing runs again
    assert runs.read_text().count("\n") == 1

    # Another installation's CA joins it; one whose directory is gone is taken out.
    gone_dir = tmp_path / "gone" / "tls"
    gone = LocalCA.load_or_create(gone_dir)
    assert gone.install(store)
    shutil.rmtree(gone_dir)
    other = LocalCA.load_or_create(tmp_path / "other" / "tls")
    assert other.install(store)
    assert sorted(p.name for p in store.anchors.iterdir()) == sorted(
        f"{TRUST_FILE_PREFIX}{c.fingerprint[:16]}.crt" for c in (ca, other)
    )
    assert ca.trusted(store) and other.trusted(store) and not gone.trusted(store)

    assert ca.uninstall(store)
    assert not installed.exists() and not ca.trusted(store) and other.trusted(store)
    # No link is left dangling, of the removed CA's or of the one gone.
    assert store.links is not None
    links = [p.name for p in store.links.iterdir()]
    assert links == [f"{TRUST_FILE_PREFIX}{other.fingerprint[:16]}.pem"]


def test_install_says_what_to_run_when_it_cannot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = LocalCA.load_or_create(tmp_path / "tls")
    store = TrustStore(tmp_path / "anchors", ("false",), tmp_path / "bundle.crt")
    with caplog.at_level(logging.WARNING, logger="hearth.tls"):
        assert not ca.install(store)
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"sudo cp {ca.cert_path} {store.anchors}/{TRUST_FILE_PREFIX}" in warning
    assert warning.endswith("&& sudo false")


# --- the operator's certificate and the settings ----------------------------------------


def _self_signed(directory: Path, names: list[str]) -> tuple[Path, Path, bytes]:
    """A self-signed certificate for `names` (the first one an IP address if it is one),
    as an operator's own: its file, its key's file, its DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "operator.crt", directory / "operator.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file, cert.public_bytes(serialization.Encoding.DER)


def test_an_operator_certificate_is_loaded_or_refused(tmp_path: Path) -> None:
    cert_file, key_file, der = _self_signed(tmp_path, ["localhost"])
    context = certificate_context(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    end = _handshake(context, client, "localhost")
    assert end.getpeercert(binary_form=True) == der
    assert end.selected_alpn_protocol() is None  # the client offered no ALPN
    with pytest.raises(ValueError, match="cannot load the TLS certificate"):
        certificate_context(cert_file, tmp_path / "missing.key")
    with pytest.raises(ValueError, match="cannot load the TLS certificate"):
        certificate_context(key_file, cert_file)


def test_settings_and_flags_name_the_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hearth import cli, serve

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    read = config.settings({"HEARTH_TLS_CERT": str(cert), "HEARTH_TLS_KEY": str(key)})
    assert (read.tls_cert, read.tls_key) == (cert, key)
    assert config.settings({}).tls_cert is None

    seen: list[serve.ServeOptions] = []
    monkeypatch.setattr(serve, "main", lambda options: seen.append(options) or 0)
    base = ["serve", "--runtime", "container"]
    for argv in (base + ["--tls-cert", str(cert), "--tls-key", str(key)], base):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == 0
    with pytest.raises(SystemExit):
        cli.main(base + ["--no-trust-ca"])
    given, default, untrusted = seen
    assert (given.tls_cert, given.tls_key, given.trust_ca) == (cert, key, True)
    assert (default.tls_cert, default.tls_key, default.trust_ca) == (None, None, True)
    assert not untrusted.trust_ca


# --- a real server ----------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    port: int
    domain: str
    ca: LocalCA

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.cert_path))


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """A container-runtime `hearth serve` with the SDK's variables of recipe A set (plain
    HTTP, so that the tests' own SDK calls need no trust); every sandbox left is killed
    before it stops."""
    if os.geteuid() != 0:
        pytest.skip("needs root: container sandboxes")
    data = Path(tempfile.mkdtemp(prefix="hearth-tls-", dir="/var/tmp"))
    data.chmod(0o755)  # the runtime's unprivileged ids search every parent
    try:
        server, info = serve_containers(data)
        try:
            assert server.running is not None and server.running.ca is not None
            with pytest.MonkeyPatch.context() as patch:
                for name, value in info.env().items():
                    patch.setenv(name, value)
                patch.delenv("E2B_DEBUG", raising=False)
                yield Served(info.port, info.domain, server.running.ca)
                from e2b import Sandbox

                for sandbox in Sandbox.list(limit=100).next_items():
                    Sandbox.kill(sandbox.sandbox_id)
        finally:
            assert server.stop(), "hearth serve did not stop"
    finally:
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def resolvable(served: Served) -> None:
    """Sandbox hosts resolve here as they do for any program on the machine."""
    try:
        socket.getaddrinfo(f"1-x.{served.domain.rsplit(':', 1)[0]}", None)
    except OSError:
        pytest.skip("*.localhost does not resolve: install libnss-myhostname (scripts/setup.sh)")


def test_http_and_https_on_one_port(served: Served) -> None:
    plain = httpx.get(f"http://127.0.0.1:{served.port}/health")
    assert (plain.status_code, plain.text) == (200, "Health check successful")
    for host in ("localhost", "127.0.0.1"):  # by name (SNI), and by address (none)
        with httpx.Client(verify=served.client(), http2=True) as client:
            secure = client.get(f"https://{host}:{served.port}/health")
        assert (secure.status_code, secure.text) == (200, "Health check successful")
        assert secure.http_version == "HTTP/1.1"  # h2 offered, http/1.1 chosen
    # The API over https, with the SDK's key.
    listed = httpx.get(
        f"https://localhost:{served.port}/v2/sandboxes",
        headers={"X-API-Key": os.environ["E2B_API_KEY"]},
        verify=served.client(),
    )
    assert listed.status_code == 200 and isinstance(listed.json(), list)


def test_neither_tls_nor_http_is_refused_at_once(served: Served) -> None:
    # The timeout only keeps a hang from hanging the suite: the server waits 600 s for
    # a request line that never comes, where the listener refuses at once.
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as conn:
        conn.sendall(b"\x00\x01\x02 not a request")
        answer = _read_all(conn)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    # A handshake record that is not a handshake: the connection ends.
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as conn:
        conn.sendall(b"\x16\x03\x01\x00\x05hello")
        answer = _read_all(conn)
    assert not answer.startswith(b"HTTP")
    # A plain request still works on the same port afterwards.
    assert httpx.get(f"http://127.0.0.1:{served.port}/health").status_code == 200


def _read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


# A server for the sandbox: answers GET with the Host it was sent, and an `Upgrade: echo`
# with a 101 after which it echoes every byte (a WebSocket's shape, without the framing).
_ECHO_SERVER = r"""
import socketserver, sys

class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline():
            headers = {}
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("upgrade") == "echo":
                self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\n"
                                 b"Upgrade: echo\r\nConnection: Upgrade\r\n\r\n")
                self.wfile.flush()
                while data := self.request.recv(65536):
                    self.request.sendall(data)
                return
            body = headers.get("host", "").encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            self.wfile.flush()

socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"""


def _start(sandbox, command: str, url: str, verify: ssl.SSLContext, **headers: str):
    """Run `command` in the background in the sandbox; the first 200 from `url` once it
    listens (bounded retries; no timing asserted)."""
    sandbox.commands.run(command, background=True, timeout=0)
    for _ in range(100):
        response = httpx.get(url, verify=verify, headers=headers, timeout=30)
        if response.status_code == 200:
            return response
        time.sleep(0.1)
    raise AssertionError(f"{url}: {response.status_code} {response.text}")


@pytest.mark.usefixtures("resolvable")
def test_get_host_over_https(served: Served) -> None:
    from e2b import Sandbox

    sandbox = Sandbox.create(timeout=120)
    try:
        sandbox.files.write("site/index.html", "hello over https")
        host = sandbox.get_host(8000)
        assert host == f"8000-{sandbox.sandbox_id}.{served.domain}"
        url = f"https://{host}/index.html"
        answer = _start(sandbox, "cd ~/site && python3 -m http.server 8000", url, served.client())
        assert answer.text == "hello over https"
        closed = httpx.get(f"https://{sandbox.get_host(8001)}/", verify=served.client())
        assert closed.status_code == 502 and "port is not open" in closed.json()["message"]
    finally:
        sandbox.kill()
    gone = httpx.get(url, verify=served.client())
    assert gone.status_code == 502 and "was not found" in gone.json()["message"]


@pytest.mark.usefixtures("resolvable")
def test_upgrade_and_masked_host_over_https(served: Served) -> None:
    from e2b import Sandbox

    sandbox = Sandbox.create(timeout=120, network={"mask_request_host": "masked.example:${PORT}"})
    try:
        sandbox.files.write("echo_server.py", _ECHO_SERVER)
        host = sandbox.get_host(9000)
        answer = _start(
            sandbox, "python3 ~/echo_server.py 9000", f"https://{host}/", served.client()
        )
        assert answer.text == "masked.example:9000"  # mask_request_host, over TLS

        name, port = host.rsplit(":", 1)
        raw = socket.create_connection(("localhost", int(port)))
        with served.client().wrap_socket(raw, server_hostname=name) as conn:
            conn.sendall(
                f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: echo\r\n"
                "Connection: Upgrade\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(1)
            assert head.startswith(b"HTTP/1.1 101 ")
            for message in (b"first", b"second" * 10000):
                conn.sendall(message)
                echoed = b""
                while len(echoed) < len(message):
                    echoed += conn.recv(65536)
                assert echoed == message
    finally:
        sandbox.kill()


@pytest.mark.usefixtures("resolvable")
def test_traffic_token_over_https(served: Served) -> None:
    from e2b import Sandbox

    sandbox = Sandbox.create(timeout=120, network={"allow_public_traffic": False})
    try:
        token = sandbox.traffic_access_token
        assert token
        sandbox.files.write("echo_server.py", _ECHO_SERVER)
        url = f"https://{sandbox.get_host(9000)}/"
        command = "python3 ~/echo_server.py 9000"
        _start(sandbox, command, url, served.client(), **{"e2b-traffic-access-token": token})
        missing = httpx.get(url, verify=served.client())
        assert missing.status_code == 403 and "is missing" in missing.json()["message"]
        wrong = httpx.get(
            url, verify=served.client(), headers={"e2b-traffic-access-token": "wrong"}
        )
        assert wrong.status_code == 403 and "is invalid" in wrong.json()["message"]
    finally:
        sandbox.kill()


@pytest.mark.usefixtures("resolvable")
def test_auto_resume_over_https(served: Served) -> None:
    from e2b import Sandbox, SandboxState

    sandbox = Sandbox.create(timeout=300, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        sandbox.files.write("echo_server.py", _ECHO_SERVER)
        url = f"https://{sandbox.get_host(9000)}/"
        _start(sandbox, "python3 ~/echo_server.py 9000", url, served.client())
        sandbox.pause()
        assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED
        woken = httpx.get(url, verify=served.client(), timeout=120)
        assert (woken.status_code, woken.text) == (200, sandbox.get_host(9000))
        assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.RUNNING
    finally:
        sandbox.kill()


# What the SDK does over https alone: the API (E2B_API_URL, or https://api.{domain}),
# envd's Connect streams and files at https://49983-{id}.{domain}, a port of its own.
_SDK_SCRIPT = r"""
import json, ssl, sys, time, httpx
from e2b import Sandbox

# The system's roots (httpx's default is certifi's); SSL_CERT_FILE if it is set.
system = ssl.create_default_context()

sandbox = Sandbox.create(timeout=120)
try:
    out = {"run": sandbox.commands.run("echo over tls; echo err >&2").stdout}
    sandbox.files.write("site/index.html", "served")
    out["read"] = sandbox.files.read("site/index.html")
    streamed = []
    sandbox.commands.run("for i in 1 2 3; do echo $i; done", on_stdout=streamed.append)
    out["streamed"] = "".join(streamed)
    sandbox.commands.run("cd ~/site && python3 -m http.server 8000", background=True, timeout=0)
    for _ in range(100):
        url = f"https://{sandbox.get_host(8000)}/index.html"
        answer = httpx.get(url, verify=system, timeout=30)
        if answer.status_code == 200:
            break
        time.sleep(0.1)
    out["port"] = answer.text
    out["listed"] = [s.sandbox_id for s in Sandbox.list().next_items()].count(sandbox.sandbox_id)
finally:
    sandbox.kill()
print(json.dumps(out))
"""


def _run_sdk(env: dict[str, str]) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "SSL_CERT_"))}
    done = subprocess.run(
        [sys.executable, "-c", _SDK_SCRIPT],
        env={**base, "E2B_API_KEY": os.environ["E2B_API_KEY"], **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


_SDK_EXPECTED = {
    "run": "over tls\n",
    "read": "served",
    "streamed": "1\n2\n3\n",
    "port": "served",
    "listed": 1,
}


@pytest.mark.usefixtures("resolvable")
def test_the_sdk_over_https(served: Served, tmp_path: Path) -> None:
    # The CA trusted for this process alone: the SDK's transport (rustls with the native
    # roots) and httpx both read SSL_CERT_FILE.
    bundle = tmp_path / "bundle.pem"
    system = SYSTEM_BUNDLE.read_bytes() if SYSTEM_BUNDLE.is_file() else b""
    bundle.write_bytes(system + b"\n" + served.ca.cert_pem.encode())
    env = {
        "E2B_API_URL": f"https://localhost:{served.port}",
        "E2B_DOMAIN": served.domain,
        "SSL_CERT_FILE": str(bundle),
    }
    assert _run_sdk(env) == _SDK_EXPECTED


_NPM_SCRIPT = """
import { Sandbox } from 'e2b'

const sandbox = await Sandbox.create({ timeoutMs: 120_000 })
try {
  const run = await sandbox.commands.run('echo from node')
  await sandbox.files.write('site/index.html', 'served to node')
  await sandbox.commands.run('cd ~/site && python3 -m http.server 8000', {
    background: true,
    timeoutMs: 0,
  })
  let port = null
  for (let i = 0; i < 100 && port === null; i++) {
    const answer = await fetch(`https://${sandbox.getHost(8000)}/index.html`)
    if (answer.status === 200) port = await answer.text()
    else await new Promise((resolve) => setTimeout(resolve, 100))
  }
  console.log(JSON.stringify({ run: run.stdout, port }))
} finally {
  await sandbox.kill()
}
"""


@pytest.mark.usefixtures("resolvable")
def test_the_npm_sdk_over_https(served: Served) -> None:
    npm = ROOT / "tests" / "sdk" / "npm"
    npm_installed(npm, "e2b")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "NODE_EXTRA"))}
    env = {
        "E2B_API_KEY": os.environ["E2B_API_KEY"],
        "E2B_DOMAIN": served.domain,  # the API at https://api.{domain}, envd beside it
        "NODE_EXTRA_CA_CERTS": str(served.ca.cert_path),
    }
    done = subprocess.run(
        ["node", "--input-type=module", "-e", _NPM_SCRIPT],
        cwd=npm,
        env={**base, **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"run": "from node\n", "port": "served to node"}


@pytest.mark.usefixtures("resolvable")
def test_installed_ca_needs_nothing_configured(served: Served) -> None:
    """Once `install()` put the CA in the system's trust store, curl and the SDK verify
    with nothing set but E2B_DOMAIN and the key. Taken out again afterwards."""
    if not shutil.which("update-ca-certificates") or not SYSTEM_BUNDLE.is_file():
        pytest.skip("not a Debian-style trust store")
    ca = served.ca
    installed = Path("/usr/local/share/ca-certificates") / (
        f"{TRUST_FILE_PREFIX}{ca.fingerprint[:16]}.crt"
    )
    try:
        assert ca.install()
        assert installed.read_text() == ca.cert_pem
        assert ca.trusted()
        host = f"49983-{uuid.uuid4().hex[:20]}.{served.domain}"  # no such sandbox
        done = subprocess.run(
            ["curl", "-sS", f"https://{host}/health"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr  # verified with the system's roots
        assert "was not found" in json.loads(done.stdout)["message"]
        assert _run_sdk({"E2B_DOMAIN": served.domain}) == _SDK_EXPECTED
    finally:
        assert ca.uninstall()
    assert not installed.exists() and not ca.trusted()
    dangling = [
        link
        for link in Path("/etc/ssl/certs").iterdir()
        if link.is_symlink() and not link.exists() and TRUST_FILE_PREFIX in os.readlink(link)
    ]
    assert not dangling


def test_an_operator_certificate_replaces_the_local_ca(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: isolated sandboxes")
    from hearth.serve import ServeOptions, ServerThread

    cert_file, key_file, der = _self_signed(tmp_path, ["localhost", "127.0.0.1"])
    data = Path(tempfile.mkdtemp(prefix="hearth-tls-own-", dir="/var/tmp"))
    data.chmod(0o755)
    options = ServeOptions(
        host="127.0.0.1",
        port=0,
        data_dir=data,
        runtime="isolated",
        pool_sizes={},
        tls_cert=cert_file,
        tls_key=key_file,
    )
    server = ServerThread(options)
    try:
        running = server.start()
        assert running.ca is None
        assert not (data / "tls").exists()
        client = ssl.create_default_context(cafile=str(cert_file))
        answer = httpx.get(f"https://localhost:{running.port}/health", verify=client)
        assert answer.text == "Health check successful"
        # Whatever name a client asks for, it gets the operator's certificate.
        with socket.create_connection(("127.0.0.1", running.port)) as raw:
            client.check_hostname = False
            with client.wrap_socket(raw, server_hostname="1-x.localhost") as conn:
                assert conn.getpeercert(binary_form=True) == der
        assert httpx.get(f"http://127.0.0.1:{running.port}/health").status_code == 200
    finally:
        assert server.stop(), "hearth serve did not stop"
        shutil.rmtree(data, ignore_errors=True)
