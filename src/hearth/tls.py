"""TLS for Hearth's listeners: a local certificate authority, and the operator's own.

`hearth serve` answers TLS on its one public port. Without a certificate of the
operator's (`--tls-cert`/`--tls-key`) it uses a `LocalCA`: made once under the data
directory, added to this machine's trust store as `mkcert -install` does, and issuing a
leaf for exactly the name each client asks for (SNI). A leaf per name rather than one
wildcard: OpenSSL refuses `*.localhost` (a wildcard needs two labels after it), and
`{port}-{id}.localhost` is what `sandbox.get_host(port)` names.

Every context speaks HTTP/1.1 only (ALPN `http/1.1`): that is all the gateway serves.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import logging
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

ALPN = ("http/1.1",)
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_NAME = "Hearth local CA"
CA_DAYS = 10 * 365
# Under the 825 days that Apple's clients accept from any CA, as mkcert's leaves are.
LEAF_DAYS = 820
# A cached leaf is issued again this long before it expires.
LEAF_RENEW = datetime.timedelta(days=30)
LEAF_CACHE = 1024
# Listener contexts, one per address clients connect to without SNI.
SNI_CACHE = 64
# The prefix of the files `install` puts in a trust store, followed by the CA's
# fingerprint: several installations on one machine each have their own.
TRUST_FILE_PREFIX = "hearth-local-ca-"
_DNS_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True)
class TrustStore:
    """Where a distribution keeps the CAs it adds to its bundle, and how it rebuilds it."""

    anchors: Path  # a directory of one-certificate `.crt` files
    update: tuple[str, ...]  # the command that rebuilds `bundle` from them
    bundle: Path  # what TLS clients (OpenSSL, rustls' native roots, curl) read
    # Where `update` links each certificate (and its OpenSSL hash) when it adds one, but
    # leaves the links of one taken out dangling until the next addition.
    links: Path | None = None


# Debian and Ubuntu (what setup.sh supports), then Fedora/RHEL and Arch.
TRUST_STORES = (
    TrustStore(
        Path("/usr/local/share/ca-certificates"),
        ("update-ca-certificates",),
        Path("/etc/ssl/certs/ca-certificates.crt"),
        Path("/etc/ssl/certs"),
    ),
    TrustStore(
        Path("/etc/pki/ca-trust/source/anchors"),
        ("update-ca-trust", "extract"),
        Path("/etc/pki/tls/certs/ca-bundle.crt"),
    ),
    TrustStore(
        Path("/etc/ca-certificates/trust-source/anchors"),
        ("trust", "extract-compat"),
        Path("/etc/ssl/certs/ca-certificates.crt"),
    ),
)


class LocalCA:
    """A certificate authority of this installation's, kept in one directory (`ca.pem`,
    and `ca.key` readable by its owner only), that issues server certificates for any
    host name or IP address. Leaves share one key, made per process."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.directory = directory
        self.cert = cert
        self._key = key
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._lock = threading.Lock()
        self._leaves: OrderedDict[str, tuple[ssl.SSLContext, bytes, datetime.datetime]] = (
            OrderedDict()
        )
        self._sni: dict[str, tuple[ssl.SSLContext, datetime.datetime]] = {}

    @classmethod
    def load_or_create(cls, directory: Path) -> LocalCA:
        """The CA kept in `directory`, made there first if there is none (or only an
        unusable one: half of it, a key that is not the certificate's, an expired one)."""
        directory = Path(directory)
        # Searchable, so that other users can read ca.pem by its path; not listable.
        directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        with _locked(directory):
            found = _load(directory)
            if found is not None:
                return cls(directory, *found)
            cert, key = _create(directory)
            log.info("created a local certificate authority in %s", directory)
            return cls(directory, cert, key)

    @property
    def cert_path(self) -> Path:
        """The CA's certificate (PEM), for clients to trust."""
        return self.directory / CA_CERT

    @property
    def cert_pem(self) -> str:
        """The CA's certificate in PEM (a str, as `load_verify_locations(cadata=)` and
        CA bundles take it)."""
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate, in hex."""
        return self.cert.fingerprint(hashes.SHA256()).hex()

    # --- leaves ------------------------------------------------------------------------

    def server_context(self, name: str) -> ssl.SSLContext:
        """A server context presenting a leaf for exactly `name` (a DNS name or an IP
        address), issued on first use and cached. Raises ValueError for a name that is
        neither."""
        return self._leaf(_normalized(name))[0]

    def sni_context(self, default: str = "localhost") -> ssl.SSLContext:
        """A listener's context: it presents the leaf of the name a client asks for by
        SNI, and `default`'s to a client that names none (one that connects to an IP
        address: `default` is then the address it connected to). Cached by `default`."""
        key = _normalized(default)
        with self._lock:
            cached = self._sni.get(key)
        if cached is not None and _now() < cached[1] - LEAF_RENEW:
            return cached[0]
        _, pem, expires = self._leaf(key)
        # Its own context (the leaf's is shared with other users of `server_context`).
        context = _context_with(pem)

        def choose(conn: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            if not server_name:
                return
            # Not a name: the default certificate stays, which the client refuses.
            with contextlib.suppress(ValueError):
                conn.context = self.server_context(server_name)

        context.sni_callback = choose
        with self._lock:
            if len(self._sni) >= SNI_CACHE and key not in self._sni:
                self._sni.pop(next(iter(self._sni)))
            self._sni[key] = (context, expires)
        return context

    def _leaf(self, name: str) -> tuple[ssl.SSLContext, bytes, datetime.datetime]:
        """The cached context of `name`'s leaf, its PEM (certificate, then key) and
        when it expires; issued when missing or about to expire."""
        now = _now()
        with self._lock:
            cached = self._leaves.get(name)
            if cached is not None and now < cached[2] - LEAF_RENEW:
                self._leaves.move_to_end(name)
                return cached
        cert = self._issue(name, now)
        pem = cert.public_bytes(serialization.Encoding.PEM) + self._leaf_key_pem
        leaf = (_context_with(pem), pem, cert.not_valid_after_utc)
        with self._lock:
            self._leaves[name] = leaf
            self._leaves.move_to_end(name)
            while len(self._leaves) > LEAF_CACHE:
                self._leaves.popitem(last=False)
        return leaf

    def _issue(self, name: str, now: datetime.datetime) -> x509.Certificate:
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            san = x509.DNSName(name)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, name)] if len(name) <= 64 else []
        )
        public = self._leaf_key.public_key()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(
                min(now + datetime.timedelta(days=LEAF_DAYS), self.cert.not_valid_after_utc)
            )
            # Without a subject the names are the certificate's identity: critical.
            .add_extension(x509.SubjectAlternativeName([san]), critical=not subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )

    # --- the trust store ---------------------------------------------------------------

    def install(self, store: TrustStore | None = None) -> bool:
        """Add the CA to this machine's trust store (the first of `TRUST_STORES` whose
        command exists, or `store`), as `mkcert -install` does; True once it is there.
        Nothing is done if it is there already. Files of installations whose CA is gone
        (its directory removed, or holding another CA now) are taken out at the same
        time. False, with a warning that gives the commands to run by hand, if it cannot
        (not root, no known trust store)."""
        store = store or _system_store()
        if store is None:
            log.warning(
                "this machine has no trust store Hearth knows (%s): trust %s by hand"
                " for https to its sandbox hosts to verify",
                ", ".join(str(s.anchors) for s in TRUST_STORES),
                self.cert_path,
            )
            return False
        if self.trusted(store):
            return True
        target = store.anchors / f"{TRUST_FILE_PREFIX}{self.fingerprint[:16]}.crt"
        try:
            store.anchors.mkdir(parents=True, exist_ok=True)
            with _locked(store.anchors):
                _remove_stale(store.anchors, keep=target)
                _write(target, self.cert_pem.encode(), 0o644)
                _run(store.update)
                _remove_dangling(store.links)
        except (OSError, subprocess.CalledProcessError) as e:
            manual = (
                f"sudo cp {shlex.quote(str(self.cert_path))} {shlex.quote(str(target))}"
                f" && sudo {shlex.join(store.update)}"
            )
            log.warning(
                "could not add the local CA to this machine's trust store (%s); to trust it,"
                " run: %s",
                _reason(e),
                manual,
            )
            return False
        if not self.trusted(store):
            log.warning("%s ran, but %s still lacks the local CA", store.update[0], store.bundle)
            return False
        log.info("added the local CA to this machine's trust store (%s)", target)
        return True

    def uninstall(self, store: TrustStore | None = None) -> bool:
        """Take the CA out of the trust store again; True if it is not there now."""
        store = store or _system_store()
        if store is None:
            return True
        target = store.anchors / f"{TRUST_FILE_PREFIX}{self.fingerprint[:16]}.crt"
        try:
            with _locked(store.anchors):
                if target.exists():
                    target.unlink()
                    _run(store.update)
                    _remove_dangling(store.links)
        except (OSError, subprocess.CalledProcessError) as e:
            log.warning("could not take the local CA out of the trust store: %s", _reason(e))
            return False
        return not self.trusted(store)

    def trusted(self, store: TrustStore | None = None) -> bool:
        """Whether the trust store's bundle holds this CA."""
        store = store or _system_store()
        if store is None:
            return False
        try:
            bundle = store.bundle.read_bytes()
        except OSError:
            return False
        return _pem_body(self.cert_pem.encode()) in bundle.replace(b"\r\n", b"\n")


def certificate_context(cert_file: Path, key_file: Path | None = None) -> ssl.SSLContext:
    """A server context presenting the operator's certificate chain (`key_file` None:
    the key is in `cert_file` too). Raises ValueError if they cannot be loaded."""
    context = _server_context()
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        what = f"{cert_file} and {key_file}" if key_file else str(cert_file)
        raise ValueError(f"cannot load the TLS certificate {what}: {_reason(e)}") from e
    return context


# --- the CA's files ---------------------------------------------------------------------


def _load(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except FileNotFoundError:
        return None
    except ValueError as e:
        log.warning("the local CA in %s is unreadable (%s): making a new one", directory, e)
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        log.warning("the local CA's key in %s is not its certificate's: making another", directory)
        return None
    if cert.not_valid_after_utc - datetime.timedelta(days=1) < _now():
        log.warning("the local CA in %s has expired: making a new one", directory)
        return None
    return cert, key


def _create(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    # The directory, recorded in the certificate, lets a later `install` tell an
    # installed CA whose directory is gone (a removed data directory) from a live one.
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hearth"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, str(directory.resolve())),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{CA_NAME} {_host_label()}"[:64]),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(directory / CA_KEY, key_pem, 0o600)
    _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` at once, created with `mode` (never wider first)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temporary, mode)  # whatever the umask took away
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on `directory` against other processes doing the same."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- contexts ---------------------------------------------------------------------------


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(ALPN))
    return context


def _context_with(chain_and_key: bytes) -> ssl.SSLContext:
    """A server context loaded from PEM in memory (`load_cert_chain` takes only paths:
    an anonymous memory file's, so no key is written to disk)."""
    context = _server_context()
    fd = os.memfd_create("hearth-tls", os.MFD_CLOEXEC)
    with os.fdopen(fd, "wb") as f:
        f.write(chain_and_key)
        f.flush()
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    return context


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _normalized(name: str) -> str:
    """`name` as a certificate names it: an IP address in its short form (an IPv4 one
    mapped into IPv6 as IPv4), a DNS name in lower case without a trailing dot."""
    bare = name.strip().strip("[]")
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return str(address)
    host = bare.lower().rstrip(".")
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a host name or IP address: {name!r}")
    return host


# --- the trust store --------------------------------------------------------------------


def _system_store() -> TrustStore | None:
    for store in TRUST_STORES:
        if shutil.which(store.update[0]) is not None:
            return store
    return None


def _remove_stale(anchors: Path, keep: Path) -> None:
    """Take out the files of Hearth CAs whose directory no longer holds them."""
    for path in anchors.glob(f"{TRUST_FILE_PREFIX}*.crt"):
        if path == keep:
            continue
        try:
            installed = x509.load_pem_x509_certificate(path.read_bytes())
            units = installed.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
            home = Path(str(units[0].value)) if units else None
            current = (home / CA_CERT).read_bytes() if home is not None else b""
        except FileNotFoundError:
            current = b""
        except (OSError, ValueError):
            continue  # not one of ours to judge
        if _pem_body(installed.public_bytes(serialization.Encoding.PEM)) not in current:
            log.info("removing %s from the trust store: its CA is gone", path.name)
            path.unlink(missing_ok=True)


def _remove_dangling(links: Path | None) -> None:
    """Remove the links to Hearth CAs' files that lead nowhere now."""
    if links is None:
        return
    for path in links.iterdir():
        with contextlib.suppress(OSError):
            ours = os.readlink(path).rpartition("/")[2].startswith(TRUST_FILE_PREFIX)
            if ours and not path.exists():
                path.unlink()


def _run(command: Sequence[str]) -> None:
    subprocess.run(command, check=True, capture_output=True, stdin=subprocess.DEVNULL)


def _pem_body(pem: bytes) -> bytes:
    lines = pem.replace(b"\r\n", b"\n").strip().split(b"\n")
    return b"\n".join(lines[1:-1])


def _reason(error: BaseException) -> str:
    if isinstance(error, subprocess.CalledProcessError):
        output = (error.stderr or b"").decode(errors="replace").strip()
        return f"{shlex.join(error.cmd)} failed: {output or error.returncode}"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)


def _host_label() -> str:
    return f"({socket.gethostname()})"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
