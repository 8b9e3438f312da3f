"""The stand-in internet itself, from the host (no sandboxes): every site answers HTTP,
HTTPS, HEAD, its server-first port and its UDP echo as itself; the DNS server answers
the test names and nothing else; and nothing of a stand-in stays on the host."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from network.internet import (
    BENCHMARK_RANGE,
    E2B_PRIVATE,
    INTERFACE_PREFIX,
    NETNS_PREFIX,
    Internet,
    Site,
    sweep_stale,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, veth pairs"),
]


def get(
    site: Site,
    name: str,
    path: str = "/",
    *,
    method: str = "GET",
    tls: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request to `site`'s address, for `name` (Host, and SNI over TLS)."""
    if tls is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(site.address, 80, timeout=10)
    else:
        conn = _Https(site.address, name, tls)
    try:
        conn.request(method, path, body=body, headers={"Host": name, **(headers or {})})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


class _Https(http.client.HTTPSConnection):
    """HTTPS to an address, verifying the certificate for another name."""

    def __init__(self, address: str, name: str, tls: ssl.SSLContext) -> None:
        super().__init__(address, 443, context=tls, timeout=10)
        self._name = name

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self._name)  # type: ignore[attr-defined]


def ask(server: str, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, server, timeout=5)
    return dns.query.udp(query, server, timeout=5)


# --- addresses ----------------------------------------------------------------------------


def test_addresses_are_public_looking_and_routed_to_the_stand_in(internet: Internet) -> None:
    addresses = [s.address for s in internet.sites.values()] + [internet.dns, internet.gateway]
    for address in addresses:
        ip = ipaddress.ip_address(address)
        assert ip in BENCHMARK_RANGE
        assert not any(ip in net for net in E2B_PRIVATE), address
    assert len(set(addresses)) == len(addresses)
    assert not internet.interface.startswith("hth")
    for site in internet.sites.values():
        route = subprocess.run(
            ["ip", "-j", "route", "get", site.address], capture_output=True, text=True, check=True
        )
        (hop,) = json.loads(route.stdout)
        assert hop["dev"] == internet.interface
        assert hop["prefsrc"] == internet.gateway


# --- the web sites ----------------------------------------------------------------------


def test_each_site_answers_http_as_itself(fresh_internet: Internet) -> None:
    for site in fresh_internet.sites.values():
        for name in site.names:
            response, body = get(site, name, "/some/path?q=1", headers={"X-Probe": name})
            assert response.status == 200
            assert response.getheader("Server") == site.name
            answer = json.loads(body)
            assert answer["site"] == site.name
            assert answer["scheme"] == "http"
            assert answer["host"] == name
            assert answer["path"] == "/some/path?q=1"
            assert answer["headers"]["x-probe"] == name
            assert answer["client"] == fresh_internet.gateway
    counts = fresh_internet.counts()
    for site in fresh_internet.sites.values():
        assert counts[site.name] == {"http": len(site.names), "https": 0, "banner": 0, "udp": 0}


def test_each_site_answers_https_with_a_certificate_for_its_names(
    fresh_internet: Internet,
) -> None:
    tls = fresh_internet.ssl_context()
    for site in fresh_internet.sites.values():
        for name in site.names:
            response, body = get(site, name, tls=tls)
            assert response.status == 200
            assert response.getheader("Server") == site.name
            assert json.loads(body)["scheme"] == "https"
            assert json.loads(body)["host"] == name
        assert fresh_internet.count(site.name, "https") == len(site.names)
    site_a, other = fresh_internet.site("site-a"), fresh_internet.site("other")
    # The certificate is the site's own, and only the test CA vouches for it.
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|doesn't match"):
        get(site_a, other.host, tls=tls)
    with pytest.raises(ssl.SSLCertVerificationError):
        get(site_a, site_a.host, tls=ssl.create_default_context())
    # The trust bundle: the host's CAs and the test CA.
    assert fresh_internet.trust_bundle is not None
    bundle = ssl.create_default_context(cafile=str(fresh_internet.trust_bundle))
    assert json.loads(get(site_a, site_a.host, tls=bundle)[1])["site"] == "site-a"
    assert len(bundle.get_ca_certs()) > 1


def test_curl_trusting_the_ca_and_head(internet: Internet) -> None:
    site = internet.site("site-b")
    for scheme in ("http", "https"):
        done = subprocess.run(
            ["curl", "-sS", "-I", "--cacert", str(internet.ca_path),
             "--resolve", f"{site.host}:80:{site.address}",
             "--resolve", f"{site.host}:443:{site.address}", site.url(scheme=scheme)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        head, _, rest = done.stdout.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 200")
        assert "Server: site-b" in head
        assert "Content-Type: application/json" in head
        assert rest == ""
    response, body = get(site, site.host, method="HEAD")
    assert response.status == 200
    assert int(response.getheader("Content-Length")) > 0
    assert body == b""


def test_bytes_status_and_request_bodies(fresh_internet: Internet) -> None:
    site = fresh_internet.site("site-a")
    size = 3 * (1 << 20) + 17  # more than one write of the server's
    for tls in (None, fresh_internet.ssl_context()):
        response, body = get(site, site.host, f"/bytes/{size}", tls=tls)
        assert response.status == 200
        assert response.getheader("Content-Type") == "application/octet-stream"
        assert len(body) == size
        assert body.count(0) == size
    response, _ = get(site, site.host, f"/bytes/{size}", method="HEAD")
    assert int(response.getheader("Content-Length")) == size
    response, body = get(site, site.host, "/status/404")
    assert response.status == 404
    assert json.loads(body)["site"] == "site-a"
    response, body = get(site, site.host, "/upload", method="POST", body=b"x" * 1000)
    assert json.loads(body)["method"] == "POST"
    assert json.loads(body)["body_bytes"] == 1000
    seen = fresh_internet.requests("site-a")
    assert [r["path"] for r in seen] == [f"/bytes/{size}"] * 3 + ["/status/404", "/upload"]
    assert [r["scheme"] for r in seen[:2]] == ["http", "https"]
    assert fresh_internet.requests("site-b") == []


def test_the_server_first_port_speaks_first_then_echoes(fresh_internet: Internet) -> None:
    for site in fresh_internet.sites.values():
        with socket.create_connection((site.address, fresh_internet.banner_port), 10) as sock:
            banner = sock.recv(1024)  # nothing sent yet: the server speaks first
            assert banner == f"SSH-2.0-{site.name} hearth-stand-in\r\n".encode()
            sock.sendall(b"hello\n")
            assert sock.recv(1024) == b"hello\n"
        assert fresh_internet.count(site.name, "banner") == 1


def test_udp_echo_names_the_site(fresh_internet: Internet) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        for site in fresh_internet.sites.values():
            sock.sendto(b"ping", (site.address, fresh_internet.udp_echo_port))
            reply, peer = sock.recvfrom(1024)
            assert reply == f"{site.name}: ping".encode()
            assert peer == (site.address, fresh_internet.udp_echo_port)
    assert {s: c["udp"] for s, c in fresh_internet.counts().items()} == dict.fromkeys(
        fresh_internet.sites, 1
    )


# --- DNS ----------------------------------------------------------------------------------


def test_dns_answers_the_test_names(fresh_internet: Internet) -> None:
    expected = {
        "site-a.test": "site-a",
        "www.site-a.test": "site-a",
        "api.site-a.test": "site-a",
        "site-b.test": "site-b",
        "www.site-b.test": "site-b",
        "other.test": "other",
    }
    assert fresh_internet.records() == {
        name: [fresh_internet.site(site).address] for name, site in expected.items()
    }
    for name, site in expected.items():
        for tcp in (False, True):
            answer = ask(fresh_internet.dns, name.upper() if tcp else name, tcp=tcp)
            assert answer.rcode() == dns.rcode.NOERROR
            assert answer.flags & dns.flags.AA
            (rrset,) = answer.answer
            assert [r.address for r in rrset] == [fresh_internet.site(site).address]
        assert fresh_internet.site_of(name).name == site
    # A name that exists has no AAAA: an empty answer, not NXDOMAIN.
    answer = ask(fresh_internet.dns, "site-a.test", "AAAA")
    assert answer.rcode() == dns.rcode.NOERROR
    assert answer.answer == []
    queries = fresh_internet.dns_queries()
    assert len(queries) == 2 * len(expected) + 1
    assert {q["transport"] for q in queries} == {"udp", "tcp"}
    assert queries[-1]["name"] == "site-a.test"
    assert queries[-1]["type"] == "AAAA"
    assert queries[-1]["client"] == fresh_internet.gateway


def test_dns_nxdomain_for_every_other_name(internet: Internet) -> None:
    for name in ("nothing.test", "x.other.test", "site-a.test.example", "example.com", "com"):
        answer = ask(internet.dns, name)
        assert answer.rcode() == dns.rcode.NXDOMAIN, name
        assert answer.answer == []


def test_dns_records_can_be_changed_and_reset(fresh_internet: Internet) -> None:
    fresh_internet.set_record("metadata.test", ["169.254.169.254"])
    fresh_internet.set_record("site-b.test", ["198.18.0.99", "198.18.0.98"])
    (rrset,) = ask(fresh_internet.dns, "metadata.test").answer
    assert [r.address for r in rrset] == ["169.254.169.254"]
    (rrset,) = ask(fresh_internet.dns, "site-b.test").answer
    assert sorted(r.address for r in rrset) == ["198.18.0.98", "198.18.0.99"]
    fresh_internet.delete_record("other.test")
    assert ask(fresh_internet.dns, "other.test").rcode() == dns.rcode.NXDOMAIN
    with pytest.raises(ValueError, match=r"\.test"):
        fresh_internet.set_record("example.com", ["198.18.0.10"])
    fresh_internet.reset()
    assert fresh_internet.dns_queries() == []
    assert fresh_internet.records() == fresh_internet.default_records()
    assert ask(fresh_internet.dns, "metadata.test").rcode() == dns.rcode.NXDOMAIN
    assert ask(fresh_internet.dns, "other.test").rcode() == dns.rcode.NOERROR


# --- teardown -------------------------------------------------------------------------------


def _host_shows(netns: str, interface: str, subnet: str) -> list[str]:
    """What the host shows of one stand-in, read without internet.py's helpers."""
    found = []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if any(line.split()[0] == netns for line in listed.splitlines() if line.strip()):
        found.append(f"netns {netns}")
    if interface in os.listdir("/sys/class/net"):
        found.append(f"link {interface}")
    routes = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    network = subnet.split("/")[0].rsplit(".", 1)[0] + "."
    found += [r for r in routes.splitlines() if network in r or f"dev {interface}" in r]
    return found


def test_a_second_stand_in_takes_another_subnet_and_leaves_nothing(internet: Internet) -> None:
    second = Internet().start()
    try:
        assert second.subnet != internet.subnet
        assert second.netns != internet.netns and second.interface != internet.interface
        shown = _host_shows(second.netns, second.interface, str(second.subnet))
        assert f"netns {second.netns}" in shown and f"link {second.interface}" in shown
        site = second.site("site-a")
        _, body = get(site, site.host)
        assert json.loads(body)["site"] == "site-a"
        assert second.count("site-a") == 1
        _, body = get(internet.site("site-a"), "site-a.test")  # the first one still answers
        assert json.loads(body)["site"] == "site-a"
        server = second.pid
        assert server is not None
    finally:
        second.close()
    assert second.leftovers() == {}
    assert _host_shows(second.netns, second.interface, str(second.subnet)) == []
    assert not os.path.exists(f"/proc/{server}")
    # Its addresses are no longer this host's to route (no packet is sent to find out:
    # without the stand-in they would follow the default route off the machine).
    route = subprocess.run(
        ["ip", "-j", "route", "get", site.address], capture_output=True, text=True, check=True
    )
    assert json.loads(route.stdout)[0].get("dev") != second.interface
    second.close()  # again: nothing to do, no error


def test_servers_exit_with_their_owner_and_the_next_start_sweeps_the_rest(
    internet: Internet,
) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from network.internet import Internet\n"
         "net = Internet().start()\n"
         "print(net.pid, net.netns, net.interface, net.directory, flush=True)\n"
         "sys.stdin.read()\n"],
        cwd=os.path.dirname(os.path.dirname(__file__)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert owner.stdout is not None
    pid, netns, interface, directory = owner.stdout.readline().split()
    owner.kill()  # no close(): what a crashed test session leaves
    owner.wait()
    for _ in range(200):  # the servers see their stdin close and exit
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")
    assert netns.startswith(NETNS_PREFIX) and interface.startswith(INTERFACE_PREFIX)
    assert os.path.exists(f"/run/netns/{netns}")
    assert os.path.exists(f"/sys/class/net/{interface}")
    removed = sweep_stale()
    assert {netns, interface, directory} <= set(removed)
    assert not os.path.exists(f"/run/netns/{netns}")
    assert not os.path.exists(f"/sys/class/net/{interface}")
    assert not os.path.exists(directory)
    # The session's own stand-in is left alone.
    assert internet.leftovers()["netns"] == [internet.netns]
    _, body = get(internet.site("other"), "other.test")
    assert json.loads(body)["site"] == "other"
