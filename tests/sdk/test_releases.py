"""Released E2B SDKs of the last 18 months (to 2026-12) against a real `hearth serve`:
create, commands.run, files write/read, pause, connect (the resume), kill.

Each release is installed once into its own environment under Hearth's cache directory
(`uv` for PyPI's `e2b`, `npm` for npm's) and runs `releases/everyday.py` or
`releases/everyday.mjs` in a subprocess. Releases that know `E2B_API_URL` and
`E2B_SANDBOX_URL` (Python 2.7, JS 2.8 and later) use them (recipe A, spec §1.6); the
older ones know only `E2B_DOMAIN` and reach `https://api.<domain>` and
`https://49983-<id>.<domain>`, so they get a wildcard domain (recipe B): a TLS front
with a certificate of a CA made for the session, standing in for the TLS proxy such a
deployment has, and every name under the domain resolving to this machine (the
`releases/` preloads stand in for the DNS record).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hearth import config

pytestmark = pytest.mark.root

RELEASES = Path(__file__).with_name("releases")
DOMAIN = "hearth.test"

# (version, recipe): the oldest release of the window, a spread, the newest. The test
# ids are `version-recipe`.
PYTHON = [
    ("1.5.1", "B"),  # 2025-06-05: `Sandbox()`, no pause; ids `{sandboxID}-{clientID}`
    ("2.0.0", "B"),  # 2025-08-21: 2.x, beta_pause; connect = timeout, resume on 404
    ("2.10.0", "A"),  # 2026-01: connect sends the sandbox's routing headers to the API
    ("2.30.0", "A"),  # 2026-06: pause()
    ("2.45.1", "A"),  # 2026-08: v1 create/connect, the SDK suites' version (spec §6)
    ("2.63.0", "A"),  # 2026-11: the newest, v2 create/connect
]
NPM = [
    ("1.5.3", "B"),  # mid 2025: no pause; ids `{sandboxID}-{clientID}`
    ("2.0.1", "B"),  # the 2.x API, betaPause; connect = timeout, resume on 404
    ("2.10.2", "A"),  # 2.8-2.13: envd's HTTP calls carry the token, no routing headers
    ("2.19.0", "A"),  # pause()
    ("2.51.0", "A"),  # the newest, v2 create/connect
]


@dataclass(frozen=True)
class Served:
    api_url: str
    api_key: str
    port: int
    tls_port: int
    ca: Path

    def env(self, recipe: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
        env["E2B_API_KEY"] = self.api_key
        if recipe == "A":
            env["E2B_API_URL"] = env["E2B_SANDBOX_URL"] = self.api_url
            env["E2B_DOMAIN"] = f"{DOMAIN}:{self.tls_port}"
        else:
            env["E2B_DOMAIN"] = f"{DOMAIN}:{self.tls_port}"
            env["HEARTH_TEST_DOMAIN"] = DOMAIN
            env["SSL_CERT_FILE"] = env["NODE_EXTRA_CA_CERTS"] = str(self.ca)
        return env


# --- the server and its TLS front --------------------------------------------------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for `DOMAIN` and `*.DOMAIN` it signed: (ca, cert, key)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=hearth test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={DOMAIN}")
    (directory / "leaf.ext").write_text(
        f"subjectAltName=DNS:{DOMAIN},DNS:*.{DOMAIN}\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext",
    )  # fmt: skip
    return directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"


class TlsFront:
    """TLS on `sock`, each connection spliced to plain TCP on `port` of this machine."""

    def __init__(self, sock: socket.socket, port: int, cert: Path, key: Path) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._sock, self._port = sock, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> TlsFront:
        self._thread.start()
        start = asyncio.start_server(self._splice, sock=self._sock, ssl=self._context)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(30)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    async def _splice(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        except OSError:
            writer.close()
            return

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ssl.SSLError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """A container-runtime `hearth serve` whose domain is `DOMAIN:<TLS port>`, with the
    TLS front on that port."""
    if os.geteuid() != 0:
        pytest.skip("needs root: container sandboxes")
    from hearth.serve import ServeOptions, ServerThread

    data = Path(tempfile.mkdtemp(prefix="hearth-releases-", dir="/var/tmp"))
    data.chmod(0o755)  # the runtime's unprivileged ids search every parent
    ca, cert, key = _certificates(Path(tempfile.mkdtemp(prefix="hearth-releases-tls-")))
    tls = socket.create_server(("127.0.0.1", 0))
    tls_port = tls.getsockname()[1]
    options = ServeOptions(
        host="127.0.0.1",
        port=0,
        data_dir=data,
        database_url=f"sqlite:///{data}/hearth.db",
        runtime="container",
        domains=(f"{DOMAIN}:{tls_port}",),
    )
    server = ServerThread(options)
    running = server.start()
    info = Served(running.api_url, running.api_key or "", running.port, tls_port, ca)
    try:
        with TlsFront(tls, running.port, cert, key):
            yield info
    finally:
        headers = {"X-API-Key": info.api_key}
        for listed in httpx.get(f"{info.api_url}/v2/sandboxes", headers=headers).json():
            httpx.delete(f"{info.api_url}/sandboxes/{listed['sandboxID']}", headers=headers)
        assert server.stop(), "hearth serve did not stop"
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(ca.parent, ignore_errors=True)


# --- each release in its own cached environment ----------------------------------------


def _cached(kind: str, version: str, install) -> Path:
    """The environment of `kind`'s `version` under the cache directory, installed by
    `install(directory)` on first use (into a temporary one, renamed when complete)."""
    root = config.settings().cache_dir / "sdk-releases"
    directory = root / f"{kind}-e2b-{version}"
    if not directory.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=root))
        try:
            install(partial)
            partial.rename(directory)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return directory


def _python_release(version: str) -> Path:
    """The interpreter of an environment with `e2b==version`."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is needed to install released SDKs")

    def install(directory: Path) -> None:
        for argv in (
            [uv, "venv", "-q", "--python", sys.executable, str(directory)],
            [uv, "pip", "install", "-q", "--python", str(directory / "bin/python"),
             f"e2b=={version}"],
        ):  # fmt: skip
            done = subprocess.run(argv, capture_output=True, text=True)
            assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"

    return _cached("python", version, install) / "bin" / "python"


def _npm_release(version: str) -> Path:
    """A directory whose node_modules has `e2b@version`."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed to install released SDKs")

    def install(directory: Path) -> None:
        (directory / "package.json").write_text('{"private": true, "type": "module"}\n')
        argv = [npm, "install", "--no-audit", "--no-fund", "--save-exact", f"e2b@{version}"]
        done = subprocess.run(argv, cwd=directory, capture_output=True, text=True)
        assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"

    return _cached("npm", version, install)


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a hung call must not hang the suite; no speed is asserted
    )
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            _, step, value = line.split(" ", 2)
            results[step] = json.loads(value)
    assert done.returncode == 0, f"after {list(results)}:\n{done.stdout}\n{done.stderr}"
    return results


def _check(results: dict[str, object], served: Served, pausable: bool) -> None:
    assert isinstance(results["create"], str)
    # 1.x SDKs name a sandbox `{sandboxID}-{clientID}`.
    sandbox_id = results["create"].split("-")[0]
    assert len(sandbox_id) == 20 and sandbox_id.isalnum()
    assert results["run"] == "hello\n"
    assert results["read"] is True
    # Paused: its envd is not served (is_running() is False) until the connect.
    assert results["pause"] == (False if pausable else "absent")
    assert results["connect"] is True
    assert results["reconnected"] is True
    killed, running = results["kill"]
    assert killed in (True, None) and running is False  # JS before 2.5x: kill() is void
    gone = httpx.get(
        f"{served.api_url}/sandboxes/{sandbox_id}", headers={"X-API-Key": served.api_key}
    )
    assert gone.status_code == 404


@pytest.mark.parametrize(("version", "recipe"), PYTHON)
def test_python_release(served: Served, version: str, recipe: str) -> None:
    python = _python_release(version)
    env = served.env(recipe)
    if recipe == "B":
        env["PYTHONPATH"] = str(RELEASES / "wildcard")
    results = _run([str(python), str(RELEASES / "everyday.py"), version], RELEASES, env)
    assert results["version"] == version
    _check(results, served, pausable=version != "1.5.1")


@pytest.mark.parametrize(("version", "recipe"), NPM)
def test_npm_release(served: Served, version: str, recipe: str) -> None:
    modules = _npm_release(version)
    env = served.env(recipe)
    argv = ["node"]
    if recipe == "B":
        argv += ["-r", str(RELEASES / "resolve.cjs")]
    # Run from the release's directory, so that `e2b` resolves to its node_modules.
    script = modules / "everyday.mjs"
    shutil.copyfile(RELEASES / "everyday.mjs", script)
    results = _run([*argv, str(script), version], modules, env)
    installed = json.loads((modules / "node_modules/e2b/package.json").read_text())
    assert installed["version"] == version
    _check(results, served, pausable=version != "1.5.3")
