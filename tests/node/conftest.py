"""Fixtures for the node's tests: a container LocalNode, a stand-in internet, leaks().

Everything here needs root (namespaces, mounts, cgroups, nftables). The stand-in
internet is a network namespace this file creates, joined to the host by a veth pair on
TEST-NET-2 (198.51.100.0/24), with an HTTP server in it; the tests never reach an
address they did not create.
"""

from __future__ import annotations

import contextlib
import glob
import http.server
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearth.node.interface import SandboxSpec
from hearth.node.network.rules import SLOT_SETS

ROOT_ONLY = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, mounts, nftables"),
]
ID_RANGE = range(2**30, 2**31)  # host ids of container sandboxes (runtime/container)
CGROUP_PARENT = "hearth"
INTERFACE_PREFIX = "hth"
TABLE = "hearth"


def new_id() -> str:
    """A sandbox id: 20 characters of [a-z0-9]."""
    return secrets.token_hex(10)


def spec(template: str = "busybox", **overrides) -> SandboxSpec:
    fields = {"sandbox_id": new_id(), "template_id": template, "cpu_count": 1, "memory_mb": 256}
    fields.update(overrides)
    return SandboxSpec(**fields)


# --- what a sandbox may leave on the host ---------------------------------------------


def _of_a_slot(element) -> bool:
    """Whether a set element names a slot (an interface, alone or first in a pair)."""
    if isinstance(element, dict) and "concat" in element:
        element = element["concat"][0]
    if isinstance(element, list):  # a map's [key, value]
        element = element[0]
    return isinstance(element, str) and element.startswith(INTERFACE_PREFIX)


def _nft_elements(name: str) -> list:
    for kind in ("set", "map"):
        done = subprocess.run(
            ["nft", "-j", "list", kind, "inet", TABLE, name], capture_output=True, text=True
        )
        if done.returncode == 0:
            break
    else:
        return []
    found = []
    for item in json.loads(done.stdout).get("nftables", []):
        found += (item.get("set") or item.get("map") or {}).get("elem", [])
    return found


def _all_mount_tables() -> str:
    seen, tables = set(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ns = os.readlink(f"/proc/{entry}/ns/mnt")
                if ns not in seen:
                    seen.add(ns)
                    tables.append(Path(f"/proc/{entry}/mountinfo").read_text())
            except OSError:
                pass
    return "".join(tables)


def _processes(data_dir: Path) -> list[str]:
    """Processes of sandboxes (by their host ids), and OCI runtime or launcher processes
    working under `data_dir`; zombies included."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields["Uid"].split()[1])
        state = fields["State"].strip()
        if uid in ID_RANGE or str(data_dir).encode() in cmdline:
            found.append(f"{entry} [{state}] {cmdline.decode(errors='replace')[:120]}")
    return found


def _loop_devices(data_dir: Path) -> list[str]:
    """Loop devices whose backing file is under `data_dir` (sandboxes' disks), deleted
    files included (the kernel appends " (deleted)")."""
    found = []
    for backing in sorted(glob.glob("/sys/block/loop*/loop/backing_file")):
        try:
            path = Path(backing).read_text().strip()
        except OSError:
            continue  # detached meanwhile
        if path.startswith(f"{data_dir}/"):
            found.append(f"{backing.split('/')[3]} {path}")
    return found


def _ls(path: Path) -> list[str]:
    return sorted(os.listdir(path)) if path.is_dir() else []


def leaks(data_dir: Path, *, closed: bool = False) -> dict[str, list]:
    """Everything of Hearth's sandboxes that exists on the host now; empty when none
    run. Looks at the host itself, not at what the node believes. The node's own lxcfs
    daemon and mount are not the sandboxes': `closed` (the node is) counts them too."""
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    lxcfs = f"{data_dir}/lxcfs/"
    found = {
        "netns pins": _ls(data_dir / "netns"),
        "netns mounts": [line for line in mountinfo if "nsfs" in line and str(data_dir) in line],
        "interfaces": [n for n in _ls(Path("/sys/class/net")) if n.startswith(INTERFACE_PREFIX)],
        "rules": [e for name in SLOT_SETS for e in _nft_elements(name) if _of_a_slot(e)],
        "mounts (any namespace)": [
            line
            for line in _all_mount_tables().splitlines()
            if str(data_dir) in line and lxcfs not in line
        ],
        "loop devices": _loop_devices(data_dir),
        "cgroups": sorted(
            p for p in glob.glob(f"/sys/fs/cgroup/*/{CGROUP_PARENT}/*") if os.path.isdir(p)
        ),
        "processes": _processes(data_dir),
        "sandbox dirs": _ls(data_dir / "sandboxes"),
        "runtime state": _ls(data_dir / "oci"),
    }
    if closed:
        found.update(node_leaks(data_dir))
    return {k: v for k, v in found.items() if v}


def reap(pids: list[int]) -> None:
    """Reap runtime monitors a node of this process started and left (they are this
    process's children once that node is gone)."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def upper_layer(data_dir: Path, sandbox_id: str) -> Path:
    """A container sandbox's writable layer, as the host sees it (on its disk)."""
    return data_dir / "sandboxes" / sandbox_id / "disk" / "upper"


def only_files_left(found: dict[str, list], *sandbox_ids: str) -> bool:
    """Whether `found` (from `leaks()`) is nothing but these sandboxes' directories and
    their disks (a mount of each, its loop device): what a filesystem-only pause keeps."""
    disks = [f"/sandboxes/{i}/disk " for i in sandbox_ids]
    images = sorted(f"/sandboxes/{i}/disk.img" for i in sandbox_ids)
    loops = sorted(line[line.index("/sandboxes/") :] for line in found.get("loop devices", []))
    return (
        set(found) == {"sandbox dirs", "mounts (any namespace)", "loop devices"}
        and sorted(found["sandbox dirs"]) == sorted(sandbox_ids)
        and all(any(d in line for d in disks) for line in found["mounts (any namespace)"])
        and loops == images
    )


def node_leaks(data_dir: Path) -> dict[str, list]:
    """What a closed node may have left beside its sandboxes': its lxcfs daemon, the
    daemon's mount (in any namespace), directory and host-wide link."""
    from hearth.node.runtime.container.lxcfs import Lxcfs

    lxcfs = Lxcfs(data_dir / "lxcfs")
    daemons = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if str(lxcfs.alias).encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                daemons.append(entry)
    found = {
        "lxcfs daemons": daemons,
        "lxcfs mounts (any namespace)": [
            line for line in _all_mount_tables().splitlines() if str(lxcfs.mount) in line
        ],
        "lxcfs directory": [str(lxcfs.directory)] if lxcfs.directory.exists() else [],
        "lxcfs link": [str(lxcfs.alias)] if os.path.lexists(lxcfs.alias) else [],
    }
    return {k: v for k, v in found.items() if v}


def wait_no_leaks(data_dir: Path, timeout: float = 10.0, *, closed: bool = False) -> dict:
    """leaks(), given a moment for processes the kernel is still tearing down."""
    deadline = time.monotonic() + timeout
    while True:
        found = leaks(data_dir, closed=closed)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


# --- the node -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hearth-node-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def leaks_before(data_dir: Path) -> dict[str, list]:
    """The host must start clean, or the tests' leak checks mean nothing."""
    found = leaks(data_dir)
    if found:
        pytest.fail(f"the host already holds sandbox resources: {found}")
    return found


@pytest.fixture(scope="session")
async def node(data_dir: Path, leaks_before) -> AsyncIterator:
    from hearth.node.local import LocalNode

    async with LocalNode(data_dir) as n:
        yield n
    found = wait_no_leaks(data_dir, closed=True)
    if found:
        # Leave the host clean for the next run whatever failed: a new node adopts or
        # removes everything under data_dir, and closing it stops what it adopted.
        async with LocalNode(data_dir):
            pass
    assert found == {}


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch):
    """Point the E2B SDK (debug mode) at a sandbox address: call it with the address."""
    for name in ("E2B_API_KEY", "E2B_ACCESS_TOKEN", "E2B_DOMAIN", "E2B_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("E2B_DEBUG", "true")

    def point(address) -> str:
        url = f"http://{address.host}:{address.port(49983)}"
        monkeypatch.setenv("E2B_SANDBOX_URL", url)
        return url

    return point


# --- a stand-in internet --------------------------------------------------------------


@dataclass(frozen=True)
class Internet:
    server: str  # "198.51.100.2:8080": an HTTP server "on the internet"
    metadata: str  # "169.254.169.254:8080": the same server on a link-local address
    body: str  # what GET / on it returns


INET_NS = "hearth-test-inet"
INET_HOST, INET_PEER = "htest0", "htest1"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def internet() -> Iterator[Internet]:
    body = f"hello from the stand-in internet {secrets.token_hex(4)}"
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("netns", "del", INET_NS)
    _ip("netns", "add", INET_NS)
    server = None
    try:
        _ip("link", "add", INET_HOST, "type", "veth", "peer", "name", INET_PEER, "netns", INET_NS)
        _ip("addr", "add", "198.51.100.1/24", "dev", INET_HOST)
        _ip("link", "set", INET_HOST, "up")
        for args in (
            ("addr", "add", "198.51.100.2/24", "dev", INET_PEER),
            ("addr", "add", "169.254.169.254/32", "dev", INET_PEER),
            ("link", "set", INET_PEER, "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("-n", INET_NS, *args)
        _ip("route", "add", "169.254.169.254/32", "via", "198.51.100.2")
        root = Path(tempfile.mkdtemp(prefix="hearth-test-www-"))
        (root / "index.html").write_text(body)
        server = subprocess.Popen(
            ["ip", "netns", "exec", INET_NS, sys.executable, "-m", "http.server", "8080",
             "--bind", "0.0.0.0", "--directory", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_listening(INET_NS, "198.51.100.2", 8080)
        yield Internet(server="198.51.100.2:8080", metadata="169.254.169.254:8080", body=body)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("route", "del", "169.254.169.254/32")
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", INET_HOST)
        _ip("netns", "del", INET_NS)


def _wait_listening(netns: str, host: str, port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the test server in {netns} did not come up")


class HostServer:
    """An HTTP server on the host, in this process's (the host's) network namespace."""

    def __init__(self, bind: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"host service")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((bind, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
