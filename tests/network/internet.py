"""A stand-in internet for network tests: public-looking addresses in a namespace of
their own, with web, TLS, server-first, UDP echo and DNS servers behind them.

`Internet().start()` makes a network namespace (`hthnet-<pid>-<n>`) joined to the
host's by a veth pair (`fnet<pid>-<n>` on the host), on a free /24 of 198.18.0.0/15:
the benchmarking range, outside every private range of E2B's list, so a sandbox's
policy treats it as the internet, while nothing routes it beyond this machine. The
host's end is `.1`; the sites answer on `.10`, `.11`, `.12` and the DNS server on `.53`
(`198.18.0.x` unless another stand-in holds that /24). Sandboxes reach it as they reach
the internet: forwarded by the host and masqueraded behind `.1`, which the namespace
routes back to (its default route is the host's end).

The servers are one process (`_servers.py`) run in the namespace with `ip netns exec`;
it exits when its stdin closes, so it dies with its owner. Every site serves HTTP (80),
HTTPS (443, a certificate for its names signed by a CA made here: `ca_path`), a port
where the server speaks first (22) and a UDP echo (7); each answer names the site. The
DNS server is authoritative for `.test` and NXDOMAIN for every other name.

`close()` releases everything through one exit stack; `leftovers()` says what of it is
still on the host. A stand-in left by a process that died is removed by the next start.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import itertools
import json
import os
import re
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.node.network.rules import DEFAULT_BLOCKED

SERVERS = Path(__file__).with_name("_servers.py")
BENCHMARK_RANGE = ipaddress.ip_network("198.18.0.0/15")
# E2B's private ranges: what a sandbox may never reach whatever its rules (Hearth's list).
E2B_PRIVATE = tuple(ipaddress.ip_network(n) for n in DEFAULT_BLOCKED)

HTTP_PORT = 80
HTTPS_PORT = 443
BANNER_PORT = 22
UDP_ECHO_PORT = 7
DNS_PORT = 53
ZONE = "test"
DNS_TTL = 5  # seconds: short, so a record a test changes is not cached for long

HOST_OFFSET = 1
DNS_OFFSET = 53
# (site, offset of its address in the /24, the names that resolve to it; the first is
# the one its requests are usually made to)
SITE_LAYOUT = (
    ("site-a", 10, ("site-a.test", "www.site-a.test", "api.site-a.test")),
    ("site-b", 11, ("site-b.test", "www.site-b.test")),
    ("other", 12, ("other.test",)),
)

NETNS_PREFIX = "hthnet-"
INTERFACE_PREFIX = "fnet"  # never `hth`: that prefix is the sandbox slots'
PEER_INTERFACE = "eth0"  # the namespace's end
DIRECTORY_PREFIX = "hearth-internet-"
LOCK_PATH = "/tmp/hearth-stand-in-internet.lock"
ZEROS_SIZE = 1 << 20  # the file /bytes/N is sent from, one write at a time
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
READY_TIMEOUT = 30.0  # seconds for the servers to listen
STOP_TIMEOUT = 10.0


class InternetError(RuntimeError):
    """The stand-in internet could not be built, asked or removed."""


@dataclass(frozen=True)
class Site:
    """One web site of the stand-in internet."""

    name: str  # "site-a": its `Server:` header and the `site` of its JSON answers
    address: str  # "198.18.0.10"
    names: tuple[str, ...]  # DNS names with its address; `names[0]` is `host`

    @property
    def host(self) -> str:
        return self.names[0]

    def url(self, path: str = "/", *, scheme: str = "http", by_address: bool = False) -> str:
        """`http://site-a.test/path` (or by address: `http://198.18.0.10/path`)."""
        return f"{scheme}://{self.address if by_address else self.host}{path}"


class Internet:
    """The stand-in internet: `with Internet() as net:`, or `start()` and `close()`.

    After `start()`: `sites` (by name), `dns` (the DNS server's address), `gateway`
    (the host's end), `subnet`, `ca_path` / `ca_pem` (the CA that signed every site's
    certificate), `trust_bundle` (the host's CAs and that one: SSL_CERT_FILE for a
    process that must trust both, an egress proxy's), `netns` and `interface` (the
    namespace's and the host-side veth's names); the ports are the module's `*_PORT`
    constants, also attributes here.
    """

    http_port = HTTP_PORT
    https_port = HTTPS_PORT
    banner_port = BANNER_PORT
    udp_echo_port = UDP_ECHO_PORT
    dns_port = DNS_PORT
    zone = ZONE
    _serial = itertools.count()

    def __init__(self) -> None:
        n = next(self._serial)
        self.netns = f"{NETNS_PREFIX}{os.getpid()}-{n}"
        self.interface = f"{INTERFACE_PREFIX}{os.getpid()}-{n}"
        self._tag = f"{os.getpid()}-{n}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.gateway = ""
        self.dns = ""
        self.sites: dict[str, Site] = {}
        self.directory: Path | None = None
        self.ca_path: Path | None = None
        self.ca_pem = ""
        self.trust_bundle: Path | None = None
        self._process: subprocess.Popen | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Internet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> Internet:
        try:
            self.directory = Path(tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{self._tag}-"))
            self._stack.callback(shutil.rmtree, self.directory, ignore_errors=True)
            with _host_lock():
                sweep_stale()
                self.subnet = free_subnet()
                self._wire()
            self._layout()
            self._write_config()
            self._launch()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the servers, remove the veth pair, the namespace and the files; safe to
        repeat. Every release is tried; a failure is raised after all have run."""
        self._stack.close()

    def _wire(self) -> None:
        assert self.subnet is not None
        hosts = self.subnet.network_address
        _ip("netns", "add", self.netns)
        self._stack.callback(_ip, "netns", "del", self.netns)
        _ip("link", "add", self.interface, "type", "veth",
            "peer", "name", PEER_INTERFACE, "netns", self.netns)  # fmt: skip
        self._stack.callback(_delete_link, self.interface)
        # No IPv6 on either end: nothing routes it, it would only add link-local chatter.
        Path(f"/proc/sys/net/ipv6/conf/{self.interface}/disable_ipv6").write_text("1\n")
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "sysctl", "-qw",
             "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
            check=True, capture_output=True,
        )  # fmt: skip
        _ip("addr", "add", f"{hosts + HOST_OFFSET}/{self.subnet.prefixlen}", "dev", self.interface)
        _ip("link", "set", self.interface, "up")
        inside = [
            ("link", "set", "lo", "up"),
            ("addr", "add", f"{hosts + SITE_LAYOUT[0][1]}/{self.subnet.prefixlen}",
             "dev", PEER_INTERFACE),
            *(("addr", "add", f"{hosts + offset}/32", "dev", PEER_INTERFACE)
              for _, offset, _ in SITE_LAYOUT[1:]),
            ("addr", "add", f"{hosts + DNS_OFFSET}/32", "dev", PEER_INTERFACE),
            ("link", "set", PEER_INTERFACE, "up"),
            # Replies to sandboxes, whatever address they come from (masqueraded or not).
            ("route", "add", "default", "via", str(hosts + HOST_OFFSET)),
        ]  # fmt: skip
        for args in inside:
            _ip("-n", self.netns, *args)

    def _layout(self) -> None:
        assert self.subnet is not None and self.directory is not None
        hosts = self.subnet.network_address
        self.gateway = str(hosts + HOST_OFFSET)
        self.dns = str(hosts + DNS_OFFSET)
        self.sites = {
            name: Site(name, str(hosts + offset), names) for name, offset, names in SITE_LAYOUT
        }
        ca = _CertificateAuthority()
        self.ca_path = self.directory / "ca.pem"
        self.ca_pem = ca.pem
        self.ca_path.write_text(ca.pem)
        self.trust_bundle = self.directory / "trust.pem"
        system = Path(SYSTEM_BUNDLE).read_text() if Path(SYSTEM_BUNDLE).is_file() else ""
        self.trust_bundle.write_text(system.rstrip("\n") + "\n" + ca.pem)
        for site in self.sites.values():
            cert, key = ca.issue(site.names, site.address)
            (self.directory / f"{site.name}.pem").write_bytes(cert)
            key_path = self.directory / f"{site.name}.key"
            key_path.write_bytes(key)
            key_path.chmod(0o600)

    def _write_config(self) -> None:
        assert self.directory is not None
        config = {
            "sites": [
                {
                    "name": s.name,
                    "address": s.address,
                    "cert": str(self.directory / f"{s.name}.pem"),
                    "key": str(self.directory / f"{s.name}.key"),
                }
                for s in self.sites.values()
            ],
            "dns": self.dns,
            "zone": ZONE,
            "ttl": DNS_TTL,
            "records": self.default_records(),
            "ports": {
                "http": HTTP_PORT,
                "https": HTTPS_PORT,
                "banner": BANNER_PORT,
                "udp": UDP_ECHO_PORT,
                "dns": DNS_PORT,
            },
            "control": str(self._control_path),
            "zeros": str(self.directory / "zeros"),
        }
        with (self.directory / "zeros").open("wb") as zeros:
            zeros.truncate(ZEROS_SIZE)
        (self.directory / "config.json").write_text(json.dumps(config, indent=2))

    def _launch(self) -> None:
        assert self.directory is not None
        log = (self.directory / "servers.log").open("wb")
        self._stack.callback(log.close)
        self._process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, str(SERVERS),
             str(self.directory / "config.json")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
        )  # fmt: skip
        self._stack.callback(self._stop)
        assert self._process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            if not selector.select(READY_TIMEOUT):
                raise InternetError(f"the servers did not start in {READY_TIMEOUT:.0f} s")
        line = self._process.stdout.readline()
        if line.strip() != b"ready":
            self._process.wait(STOP_TIMEOUT)
            tail = (self.directory / "servers.log").read_text(errors="replace")[-2000:]
            raise InternetError(f"the servers did not start ({self._process.returncode}):\n{tail}")

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None
        with contextlib.suppress(OSError):
            process.stdin.close()  # the servers exit when their stdin closes
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    # --- what it holds ----------------------------------------------------------------

    @property
    def _control_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "control.sock"

    @property
    def pid(self) -> int | None:
        """The servers' process (in the namespace), while they run."""
        return self._process.pid if self._process is not None else None

    def site(self, name: str) -> Site:
        return self.sites[name]

    def site_of(self, name: str) -> Site:
        """The site a DNS name of the default records belongs to."""
        for site in self.sites.values():
            if name.lower().rstrip(".") in site.names:
                return site
        raise KeyError(name)

    def default_records(self) -> dict[str, list[str]]:
        """Name -> addresses, as the DNS server answers them after `start` or `reset`."""
        return {name: [s.address] for s in self.sites.values() for name in s.names}

    def leftovers(self) -> dict[str, list[str]]:
        """What of this stand-in exists on the host now; empty once `close` has run."""
        found: dict[str, list[str]] = {
            "netns": [n for n in _netns_names() if n == self.netns],
            "interfaces": [self.interface] if _link_exists(self.interface) else [],
            "routes": [],
            "addresses": [],
            "processes": [],
            "files": [str(self.directory)] if self.directory and self.directory.exists() else [],
        }
        if self.subnet is not None:
            found["routes"] = [
                f"{dst} dev {dev}" for dst, dev in _host_routes() if dst.overlaps(self.subnet)
            ]
            found["addresses"] = [
                f"{net} dev {dev}" for net, dev in _host_addresses() if net.overlaps(self.subnet)
            ]
        if self.directory is not None:
            found["processes"] = _processes_naming(str(self.directory))
        return {k: v for k, v in found.items() if v}

    # --- asking the servers -----------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Site -> {"http", "https", "banner", "udp"} -> what it received since start or
        `reset()`: requests, TLS requests, connections to the banner port, datagrams."""
        return self._ask("snapshot")["counts"]

    def count(self, site: str, service: str | None = None) -> int:
        """How many requests (of one service, or of all) `site` received."""
        counts = self.counts()[site]
        return counts[service] if service else sum(counts.values())

    def requests(self, site: str) -> list[dict[str, Any]]:
        """The HTTP(S) requests `site` received (the latest 2000), oldest first, as its
        JSON answers describe them: site, scheme, method, path, host, headers (names in
        lower case), client (the source address it saw), body_bytes."""
        return self._ask("snapshot")["requests"][site]

    def dns_queries(self) -> list[dict[str, Any]]:
        """The DNS questions asked (the latest 2000): name, type, rcode, transport, client."""
        return self._ask("snapshot")["queries"]

    def records(self) -> dict[str, list[str]]:
        """The DNS server's records now: name -> addresses."""
        return self._ask("snapshot")["records"]

    def set_record(self, name: str, addresses: Sequence[str]) -> None:
        """Make `name` (under `.test`) resolve to `addresses` (any, private ones too)."""
        if not name.lower().rstrip(".").endswith(f".{ZONE}"):
            raise ValueError(f"the stand-in DNS serves names under .{ZONE} only: {name}")
        self._ask("set_record", name=name, addresses=list(addresses))

    def delete_record(self, name: str) -> None:
        self._ask("delete_record", name=name)

    def reset(self) -> None:
        """Forget the counts and logs; put the default DNS records back."""
        self._ask("reset")

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the sites' certificates (and nothing else)."""
        assert self.ca_path is not None
        return ssl.create_default_context(cafile=str(self.ca_path))

    def _ask(self, command: str, **fields: Any) -> Any:
        if self._process is None:
            raise InternetError("the stand-in internet is not running")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(STOP_TIMEOUT)
            sock.connect(str(self._control_path))
            sock.sendall(json.dumps({"command": command, **fields}).encode() + b"\n")
            with sock.makefile("rb") as stream:
                reply = json.loads(stream.readline())
        if not reply["ok"]:
            raise InternetError(f"{command}: {reply['error']}")
        return reply["value"]


# --- certificates -----------------------------------------------------------------------


class _CertificateAuthority:
    """A throwaway CA (P-256) and the server certificates it signs."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hearth test CA")])
        now = datetime.datetime.now(datetime.UTC)
        public = self._key.public_key()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.pem = self._cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, names: Sequence[str], address: str) -> tuple[bytes, bytes]:
        """A certificate (PEM) for `names` and `address`, and its key (PEM)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        ca_public = self._key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        *(x509.DNSName(n) for n in names),
                        x509.IPAddress(ipaddress.ip_address(address)),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


# --- the host ---------------------------------------------------------------------------


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    """Between stand-ins of other processes: choosing a /24 and taking it is one step."""
    with open(LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def free_subnet() -> ipaddress.IPv4Network:
    """The first /24 of the benchmarking range that the host neither has an address in
    nor a route to."""
    used = [net for net, _ in _host_routes()] + [net for net, _ in _host_addresses()]
    for candidate in BENCHMARK_RANGE.subnets(new_prefix=24):
        if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
            return candidate
    raise InternetError(f"no free /24 left in {BENCHMARK_RANGE}")


def sweep_stale() -> list[str]:
    """Remove the namespaces, interfaces and directories of stand-ins whose process is
    gone (killed before it could close them); returns what was removed."""
    removed = []
    # The interfaces first: a namespace's are destroyed with it, but only some time after
    # `ip netns del` returns.
    for name in os.listdir("/sys/class/net"):
        if (owner := _owner(name, INTERFACE_PREFIX)) is not None and not _alive(owner):
            _delete_link(name)
            removed.append(name)
    for name in _netns_names():
        if (owner := _owner(name, NETNS_PREFIX)) is not None and not _alive(owner):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            _ip("netns", "del", name)
            removed.append(name)
    tmp = Path(tempfile.gettempdir())
    for path in tmp.glob(f"{DIRECTORY_PREFIX}*"):
        if (owner := _owner(path.name, DIRECTORY_PREFIX)) is not None and not _alive(owner):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _owner(name: str, prefix: str) -> int | None:
    m = re.fullmatch(re.escape(prefix) + r"(\d+)-\d+(-.*)?", name)
    return int(m.group(1)) if m else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise InternetError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _ip_json(*args: str) -> list[dict[str, Any]]:
    done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout or "[]")


def _delete_link(name: str) -> None:
    done = subprocess.run(["ip", "link", "del", name], capture_output=True, text=True)
    if done.returncode != 0 and _link_exists(name):
        raise InternetError(f"ip link del {name}: {done.stderr.strip()}")


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _netns_names() -> list[str]:
    return sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []


def _host_routes() -> list[tuple[ipaddress.IPv4Network, str]]:
    found = []
    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("type") in ("broadcast", "local"):
            continue
        with contextlib.suppress(ValueError):
            found.append((ipaddress.ip_network(dst, strict=False), route.get("dev", "")))
    return found


def _host_addresses() -> list[tuple[ipaddress.IPv4Network, str]]:
    found = []
    for link in _ip_json("-4", "addr", "show"):
        for addr in link.get("addr_info", []):
            net = ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False)
            found.append((net, link.get("ifname", "")))
    return found


def _processes_naming(text: str) -> list[str]:
    """Live processes whose command line contains `text` (zombies are not)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry} {cmdline[:160]}")
    return found
