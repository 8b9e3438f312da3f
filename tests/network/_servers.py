"""The stand-in internet's servers, run inside its network namespace by `internet.py`.

    python _servers.py CONFIG.json

Serves, on every site's address: HTTP (80), HTTPS (443, the site's certificate), a TCP
port where the server speaks first (22, an SSH-like banner, then an echo) and a UDP echo
(7); and an authoritative DNS server (UDP and TCP 53) for the test names. A Unix socket
(`control` in the config) answers the owner's questions: what each site received, the
DNS queries seen, and changes to the DNS records. Prints `ready` once every socket
listens, and exits when its stdin closes, so it never outlives its owner.

Standard library and dnspython only: it runs with the interpreter of the test suite.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

SERVICES = ("http", "https", "banner", "udp")
LOG_LIMIT = 2000  # records kept per site and of DNS queries (the counts are exact)
CHUNK = 1 << 20  # bytes per write of /bytes/N, at most the size of the config's `zeros`
MAX_BYTES = 1 << 40
IDLE_TIMEOUT = 60  # seconds a connection may sit idle before the server drops it


class Ledger:
    """What every site received and which DNS questions were asked; thread-safe."""

    def __init__(self, sites: list[str]) -> None:
        self._lock = threading.Lock()
        self._sites = sites
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._counts = {s: dict.fromkeys(SERVICES, 0) for s in self._sites}
            self._requests = {s: collections.deque(maxlen=LOG_LIMIT) for s in self._sites}
            self._queries: collections.deque = collections.deque(maxlen=LOG_LIMIT)

    def count(self, site: str, service: str, record: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._counts[site][service] += 1
            if record is not None:
                self._requests[site].append(record)

    def query(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._queries.append(record)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "counts": {s: dict(c) for s, c in self._counts.items()},
                "requests": {s: list(r) for s, r in self._requests.items()},
                "queries": list(self._queries),
            }


# --- HTTP and HTTPS -------------------------------------------------------------------


class SiteHandler(BaseHTTPRequestHandler):
    """Any method, any path: a JSON description of the request (`/bytes/N`: N bytes,
    `/status/CODE`: that status). `Server:` is the site's name."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    # The headers and the body are separate writes: with Nagle's algorithm the body of a
    # keep-alive answer would wait for the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True
    server: SiteServer

    def version_string(self) -> str:
        return self.server.site

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _answer(self, send_body: bool) -> None:
        received = self._read_body()
        path = self.path.split("?", 1)[0]
        record = {
            "site": self.server.site,
            "scheme": self.server.scheme,
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "client": self.client_address[0],
            "body_bytes": received,
        }
        self.server.ledger.count(self.server.site, self.server.scheme, record)
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "bytes" and parts[1].isdigit():
            self._stream(min(int(parts[1]), MAX_BYTES), send_body)
            return
        status = 200
        if len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
            status = min(max(int(parts[1]), 200), 599)
        body = json.dumps(record).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _read_body(self) -> int:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return total
                total += len(self.rfile.read(size))
                self.rfile.readline()
        remaining = int(self.headers.get("Content-Length") or 0)
        total = 0
        while remaining > 0:
            data = self.rfile.read(min(remaining, CHUNK))
            if not data:
                break
            total += len(data)
            remaining -= len(data)
        return total

    def _stream(self, size: int, send_body: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not send_body:
            return
        self.wfile.flush()
        # Plain HTTP sends with sendfile (no copies through Python), so the server is
        # not what limits a throughput measure; TLS falls back to writes.
        remaining = size
        with open(self.server.zeros, "rb") as source:
            while remaining > 0:
                count = min(remaining, CHUNK)
                source.seek(0)  # the send fallback reads from the file's position
                sent = self.connection.sendfile(source, 0, count)
                if sent <= 0:
                    raise ConnectionError("the client went away")
                remaining -= sent


class SiteServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: str,
        port: int,
        site: str,
        scheme: str,
        ledger: Ledger,
        zeros: str,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.site, self.scheme, self.ledger, self.zeros, self.tls = site, scheme, ledger, zeros, tls
        super().__init__((address, port), SiteHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs in the connection's own thread, not in the accept loop.
        if self.tls is not None:
            request.settimeout(IDLE_TIMEOUT)
            request = self.tls.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up or refuses the certificate is no server error


# --- the server-first port and the UDP echo ---------------------------------------------


class BannerHandler(socketserver.BaseRequestHandler):
    """Speaks first, as SSH does, then echoes every byte until the client closes."""

    server: BannerServer

    def handle(self) -> None:
        self.server.ledger.count(self.server.site, "banner")
        self.request.settimeout(IDLE_TIMEOUT)
        self.request.sendall(f"SSH-2.0-{self.server.site} hearth-stand-in\r\n".encode())
        while data := self.request.recv(65536):
            self.request.sendall(data)


class BannerServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int, site: str, ledger: Ledger) -> None:
        self.site, self.ledger = site, ledger
        super().__init__((address, port), BannerHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def udp_echo(sock: socket.socket, site: str, ledger: Ledger) -> None:
    """Answers each datagram with `SITE: ` and the datagram."""
    prefix = f"{site}: ".encode()
    while True:
        data, peer = sock.recvfrom(65535)
        ledger.count(site, "udp")
        sock.sendto(prefix + data, peer)


# --- DNS ----------------------------------------------------------------------------------


class Zone:
    """A-records of the test names; authoritative for `zone`, NXDOMAIN for the rest."""

    def __init__(self, zone: str, records: dict[str, list[str]], ttl: int) -> None:
        self.origin = dns.name.from_text(zone)
        self.ttl = ttl
        self._lock = threading.Lock()
        self._defaults = dict(records)
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._records = {_key(n): list(a) for n, a in self._defaults.items()}

    def set(self, name: str, addresses: list[str]) -> None:
        with self._lock:
            self._records[_key(name)] = list(addresses)

    def delete(self, name: str) -> None:
        with self._lock:
            self._records.pop(_key(name), None)

    def records(self) -> dict[str, list[str]]:
        with self._lock:
            return {n.to_text(omit_final_dot=True): list(a) for n, a in self._records.items()}

    def answer(self, wire: bytes) -> tuple[bytes, dict[str, Any]]:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire(), {"name": None, "type": None, "rcode": "FORMERR"}
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        with self._lock:
            known = self._records.get(name)
            exists = known is not None or any(
                n.is_subdomain(name) and n != name for n in self._records
            )
        if name == self.origin:
            exists = True
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa())
        elif rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and known:
            rrset = dns.rrset.from_text_list(name, self.ttl, "IN", "A", known)
            response.answer.append(rrset)
        elif rdtype == dns.rdatatype.SOA and name == self.origin:
            response.answer.append(self._soa())
        else:
            response.authority.append(self._soa())  # NODATA: the name has no such record
        record = {
            "name": name.to_text(omit_final_dot=True).lower(),
            "type": dns.rdatatype.to_text(rdtype),
            "rcode": dns.rcode.to_text(response.rcode()),
        }
        return response.to_wire(), record

    def _soa(self) -> dns.rrset.RRset:
        return dns.rrset.from_text(
            self.origin,
            self.ttl,
            "IN",
            "SOA",
            f"ns.{self.origin} hostmaster.{self.origin} 1 3600 600 86400 {self.ttl}",
        )


def _key(name: str) -> dns.name.Name:
    return dns.name.from_text(name.lower())


def dns_udp(sock: socket.socket, zone: Zone, ledger: Ledger) -> None:
    while True:
        wire, peer = sock.recvfrom(65535)
        try:
            reply, record = zone.answer(wire)
        except Exception:  # noqa: BLE001 - a malformed query gets no answer, as from a server
            continue
        ledger.query({**record, "transport": "udp", "client": peer[0]})
        sock.sendto(reply, peer)


class DnsTcpHandler(socketserver.BaseRequestHandler):
    server: DnsTcpServer

    def handle(self) -> None:
        self.request.settimeout(IDLE_TIMEOUT)
        stream = self.request.makefile("rb")
        while len(header := stream.read(2)) == 2:
            wire = stream.read(int.from_bytes(header, "big"))
            reply, record = self.server.zone.answer(wire)
            self.server.ledger.query(
                {**record, "transport": "tcp", "client": self.client_address[0]}
            )
            self.request.sendall(len(reply).to_bytes(2, "big") + reply)


class DnsTcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int, zone: Zone, ledger: Ledger) -> None:
        self.zone, self.ledger = zone, ledger
        super().__init__((address, port), DnsTcpHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


# --- the owner's questions --------------------------------------------------------------


class ControlHandler(socketserver.StreamRequestHandler):
    """One JSON request per line, one JSON reply per line."""

    server: ControlServer

    def handle(self) -> None:
        for line in self.rfile:
            request = json.loads(line)
            try:
                reply = {"ok": True, "value": self.server.answer(request)}
            except Exception as e:  # noqa: BLE001 - reported to the owner
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            self.wfile.write(json.dumps(reply).encode() + b"\n")
            self.wfile.flush()


class ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, ledger: Ledger, zone: Zone) -> None:
        self.ledger, self.zone = ledger, zone
        super().__init__(path, ControlHandler)

    def answer(self, request: dict[str, Any]) -> Any:
        command = request["command"]
        if command == "snapshot":
            return {**self.ledger.snapshot(), "records": self.zone.records()}
        if command == "reset":
            self.ledger.reset()
            self.zone.reset()
            return None
        if command == "set_record":
            self.zone.set(request["name"], request["addresses"])
            return None
        if command == "delete_record":
            self.zone.delete(request["name"])
            return None
        raise ValueError(f"unknown command {command!r}")


# --- main -----------------------------------------------------------------------------------


def _tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def _thread(target: Callable[..., object], *args: object) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


def main(config_path: str) -> None:
    with open(config_path) as f:
        config = json.load(f)
    ports = config["ports"]
    ledger = Ledger([s["name"] for s in config["sites"]])
    zone = Zone(config["zone"], config["records"], config["ttl"])
    zeros = config["zeros"]
    servers: list[socketserver.BaseServer] = []
    for site in config["sites"]:
        name, address = site["name"], site["address"]
        tls = _tls_context(site["cert"], site["key"])
        servers += [
            SiteServer(address, ports["http"], name, "http", ledger, zeros),
            SiteServer(address, ports["https"], name, "https", ledger, zeros, tls),
            BannerServer(address, ports["banner"], name, ledger),
        ]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((address, ports["udp"]))
        _thread(udp_echo, udp, name, ledger)
    dns_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns_sock.bind((config["dns"], ports["dns"]))
    _thread(dns_udp, dns_sock, zone, ledger)
    servers.append(DnsTcpServer(config["dns"], ports["dns"], zone, ledger))
    servers.append(ControlServer(config["control"], ledger, zone))
    for server in servers:
        _thread(server.serve_forever)
    print("ready", flush=True)
    sys.stdin.read()  # returns when the owner closes the pipe or dies
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
