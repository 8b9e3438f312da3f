"""Network policy through the real SDK against `hearth serve`: allowOut, denyOut and rules
enforced in the kernel and in the egress proxy, updated while running, kept over pause
and resume, refused when malformed. The internet is the suite's stand-in (`internet.py`):
nothing leaves the machine.

The cases follow infra's `sandbox_network_out_test.go` and `..._update_test.go` and the
SDKs' `test_network.py`, with the stand-in's sites for 8.8.8.8, 1.1.1.1 and google.com.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shlex
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api.conftest import Hearth, served_network

from network.internet import Internet

ALL = "0.0.0.0/0"
CURL = "curl -sS --connect-timeout 3 --max-time 6"


@pytest.fixture(scope="module")
def hearth(internet: Internet) -> Iterator[Hearth]:
    # The egress proxy verifies the stand-in's sites by the suite's CA.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(internet.trust_bundle))
        with served_network("hearth-net-", internet.dns) as served:
            yield served


def _create(**opts):
    from e2b import Sandbox

    return Sandbox.create("base", timeout=300, metadata={"test": uuid.uuid4().hex}, **opts)


@pytest.fixture
def make(hearth: Hearth):
    made = []

    def make(**opts):
        sbx = _create(**opts)
        made.append(sbx)
        return sbx

    yield make
    for sbx in made:
        sbx.kill()


def _run(sbx, command: str, user: str = "user") -> tuple[int, str]:
    from e2b.sandbox.commands.command_handle import CommandExitException

    try:
        done = sbx.commands.run(command, user=user, timeout=60)
    except CommandExitException as e:
        return e.exit_code, e.stdout + e.stderr
    return done.exit_code, done.stdout


def _reaches(sbx, url: str, *extra: str) -> bool:
    code, _ = _run(sbx, f"{CURL} -k -o /dev/null {' '.join(extra)} {shlex.quote(url)}")
    return code == 0


def _site_of(sbx, url: str) -> str | None:
    """Which stand-in site answered `url` (its JSON's `site`), None if none did."""
    code, out = _run(sbx, f"{CURL} -k {shlex.quote(url)}")
    return json.loads(out)["site"] if code == 0 else None


def _check(sbx, expected: dict[str, bool]) -> None:
    found = {url: _reaches(sbx, url) for url in expected}
    assert found == expected


# --- addresses ---------------------------------------------------------------------------


def test_address_rules_allow_deny_and_precedence(make, internet: Internet) -> None:
    a, b, c = (internet.site(n) for n in ("site-a", "site-b", "other"))
    urls = {s.name: s.url(by_address=True) for s in (a, b, c)}
    https = {s.name: s.url(scheme="https", by_address=True) for s in (a, b, c)}

    # deny one: it is refused, the others pass
    sbx = make(network={"deny_out": [b.address]})
    _check(sbx, {urls["site-a"]: True, urls["site-b"]: False, https["site-b"]: False})
    # allow one over a deny of all (a whitelist); CIDRs and duplicates
    sbx = make(network={"allow_out": [a.address, a.address], "deny_out": [ALL]})
    _check(sbx, {urls["site-a"]: True, https["site-a"]: True, urls["site-b"]: False})
    sbx = make(network={"allow_out": [f"{a.address}/31"], "deny_out": [ALL]})
    _check(sbx, {urls["site-a"]: True, urls["site-b"]: True, urls["other"]: False})
    # allow wins over a deny of the same address; what neither names is allowed
    sbx = make(network={"allow_out": [a.address], "deny_out": [a.address, b.address]})
    _check(sbx, {urls["site-a"]: True, urls["site-b"]: False, urls["other"]: True})
    # allow_internet_access=False is a deny of all that allowed entries still pass
    sbx = make(allow_internet_access=False, network={"allow_out": [a.address]})
    _check(sbx, {urls["site-a"]: True, urls["site-b"]: False})
    # an empty allow list restricts nothing; allowing all through a deny of all passes all
    sbx = make(network={"allow_out": []})
    _check(sbx, {urls["site-b"]: True})
    sbx = make(network={"allow_out": [ALL], "deny_out": [ALL]})
    _check(sbx, {urls["site-a"]: True, urls["other"]: True})


def test_udp_follows_the_address_rules(make, internet: Internet) -> None:
    a, b = internet.site("site-a"), internet.site("site-b")
    sbx = make(network={"allow_out": [a.address], "deny_out": [ALL]})
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(3)\n"
        f"s.sendto(b'ping',(sys.argv[1],{internet.udp_echo_port}))\n"
        "try: print(s.recvfrom(100)[0].decode())\n"
        "except OSError as e: print('failed', e); sys.exit(1)\n"
    )
    sbx.files.write("/tmp/udp.py", probe)
    assert _run(sbx, f"python3 /tmp/udp.py {a.address}")[0] == 0
    assert _run(sbx, f"python3 /tmp/udp.py {b.address}")[0] != 0


def test_private_ranges_and_host_services_stay_closed(make, hearth: Hearth) -> None:
    # A service on the host, on every address: no rule may open it to a sandbox.
    with _host_service() as port:
        for network in ({}, {"allow_out": ["10.0.0.0/8", "169.254.0.0/16", "127.0.0.0/8"]}):
            sbx = make(network=network)
            gateway = _run(sbx, "ip route | awk '/default/ {print $3}'")[1].strip()
            assert not _reaches(sbx, f"http://{gateway}:{port}/")
            assert not _reaches(sbx, "http://169.254.169.254/")
            # The server's own port is the one way in: another sandbox's ports through it.
            assert _reaches(sbx, f"http://{gateway}:{hearth.port}/health")


# --- domains ----------------------------------------------------------------------------


def test_domain_rules_match_sni_and_host(make, internet: Internet) -> None:
    a, b = internet.site("site-a"), internet.site("site-b")
    sbx = make(network={"allow_out": ["SITE-A.test"], "deny_out": [ALL]})
    assert _site_of(sbx, "https://site-a.test/") == "site-a"  # SNI, case-insensitive
    assert _site_of(sbx, "http://site-a.test/") == "site-a"  # Host
    _check(
        sbx,
        {
            "https://www.site-a.test/": False,  # an exact name does not cover subdomains
            "https://site-b.test/": False,
            "http://site-b.test/": False,
            a.url(scheme="https", by_address=True): False,  # no name, no allowed address
            b.url(by_address=True): False,
        },
    )
    sbx = make(network={"allow_out": ["*.site-a.test", b.address], "deny_out": [ALL]})
    _check(
        sbx,
        {
            "https://www.site-a.test/": True,
            "http://api.site-a.test/": True,
            "https://site-a.test/": False,  # a wildcard does not match the apex
            b.url(scheme="https", by_address=True): True,  # an allowed address, no name
            "https://other.test/": False,
        },
    )
    sbx = make(network={"allow_out": ["*"], "deny_out": [ALL]})
    _check(sbx, {"https://other.test/": True, "http://site-b.test/": True})


def test_dns_spoofing_inside_the_sandbox_is_neutralized(make, internet: Internet) -> None:
    other = internet.site("other")
    sbx = make(network={"allow_out": ["site-a.test"], "deny_out": [ALL]})
    assert _site_of(sbx, "https://site-a.test/") == "site-a"
    _run(sbx, f"echo '{other.address} site-a.test' >> /etc/hosts", user="root")
    # The sandbox now connects to `other`'s address, but the proxy resolves the name
    # itself: the answer is still site-a's.
    assert _site_of(sbx, "https://site-a.test/") == "site-a"
    assert _site_of(sbx, "http://site-a.test/") == "site-a"


def test_header_transforms_reach_the_host_they_name(make, internet: Internet) -> None:
    rules = {"site-a.test": [{"transform": {"headers": {"X-Injected": "secret-1"}}}]}
    sbx = make(network={"rules": rules})
    code, out = _run(sbx, f"{CURL} -H 'X-Injected: forged' http://site-a.test/headers")
    assert code == 0, out
    assert json.loads(out)["headers"].get("x-injected") == "secret-1"
    # Over TLS the proxy presents a certificate of the local CA, which every sandbox
    # trusts (no -k), and verifies the site's own.
    code, out = _run(sbx, "curl -sS --max-time 6 https://site-a.test/headers")
    assert code == 0, out
    assert json.loads(out)["headers"].get("x-injected") == "secret-1"
    code, out = _run(sbx, f"{CURL} http://site-b.test/headers")
    assert code == 0 and "x-injected" not in json.loads(out)["headers"]


# --- updates ----------------------------------------------------------------------------


def test_update_replaces_the_rules_at_once(make, internet: Internet) -> None:
    from e2b import Sandbox

    a, b = internet.site("site-a"), internet.site("site-b")
    ua, ub = a.url(by_address=True), b.url(by_address=True)
    named = a.url()
    sbx = make()
    steps = [
        ({"deny_out": [ALL]}, {ua: False, ub: False}),
        ({"allow_out": [a.address], "deny_out": [ALL]}, {ua: True, ub: False}),
        ({"allow_out": [b.address], "deny_out": [ALL]}, {ua: False, ub: True}),
        (
            {"allow_out": ["site-a.test"], "deny_out": [ALL]},
            {named: True, ub: False},
        ),
        ({"deny_out": [ALL]}, {named: False}),
        ({}, {ua: True, ub: True}),
        ({"allow_out": [a.address]}, {ua: True, ub: True}),
    ]
    for network, expected in steps:
        sbx.update_network(network)
        _check(sbx, expected)
    Sandbox.update_network(sbx.sandbox_id, {"deny_out": [b.address]})
    _check(sbx, {ua: True, ub: False})


def test_an_update_cuts_open_connections_it_forbids(make, internet: Internet) -> None:
    a = internet.site("site-a")
    sbx = make()
    # One keep-alive connection asking again and again; it notes each answer.
    loop = (
        "import http.client,sys,time\n"
        f"c=http.client.HTTPConnection({a.address!r},80,timeout=3)\n"
        "for i in range(600):\n"
        "  try: c.request('GET','/'); c.getresponse().read(); print('ok',flush=True)\n"
        "  except Exception as e: print('cut',e,flush=True); sys.exit(0)\n"
        "  time.sleep(0.1)\n"
    )
    sbx.files.write("/tmp/loop.py", loop)
    sbx.files.write("/tmp/loop.log", "")
    sbx.commands.run("python3 /tmp/loop.py >> /tmp/loop.log 2>&1", background=True)
    _wait_for(lambda: "ok" in sbx.files.read("/tmp/loop.log"))
    sbx.update_network({"deny_out": [a.address]})
    _wait_for(lambda: "cut" in sbx.files.read("/tmp/loop.log"))


def test_rules_survive_pause_and_resume(make, internet: Internet) -> None:
    a, b = internet.site("site-a"), internet.site("site-b")
    ua, ub = a.url(by_address=True), b.url(by_address=True)
    sbx = make(network={"allow_out": [a.address], "deny_out": [ALL]})
    for keep_memory in (True, False):
        sbx.pause(keep_memory=keep_memory)
        sbx.connect()
        _check(sbx, {ua: True, ub: False})
    # An update while paused is what it resumes with.
    sbx.pause()
    sbx.update_network({"allow_out": [b.address], "deny_out": [ALL]})
    sbx.connect()
    _check(sbx, {ua: False, ub: True})


# --- what is refused --------------------------------------------------------------------


@pytest.mark.parametrize(
    "network",
    [
        {"denyOut": ["example.com"]},
        {"denyOut": ["not-a-cidr"]},
        {"allowOut": ["google.com"]},
        {"allowOut": ["google.com"], "denyOut": ["10.0.0.0/8"]},
        {"allowOut": ["300.1.1.1"]},
        {"rules": {"bad host!": []}},
        {"rules": {"a.test": [{"transform": {"headers": {"X": "a\r\nb"}}}]}},
    ],
)
def test_malformed_rules_are_a_400_at_create_and_update(hearth: Hearth, network) -> None:
    headers = {"X-API-Key": hearth.api_key}
    with httpx.Client(base_url=hearth.api_url, headers=headers, timeout=60) as api:
        before = len(api.get("/sandboxes").json())
        created = api.post("/sandboxes", json={"templateID": "base", "network": network})
        assert created.status_code == 400, created.text
        assert created.json()["code"] == 400 and created.json()["message"]
        assert len(api.get("/sandboxes").json()) == before  # nothing half-made
        sbx = api.post("/sandboxes", json={"templateID": "base"}).json()
        try:
            update = api.put(f"/sandboxes/{sbx['sandboxID']}/network", json=network)
            assert update.status_code == 400, update.text
            assert api.get(f"/sandboxes/{sbx['sandboxID']}").json().get("network") is None
        finally:
            api.delete(f"/sandboxes/{sbx['sandboxID']}")


def test_update_of_an_unknown_sandbox_is_404_and_needs_a_key(hearth: Hearth) -> None:
    with httpx.Client(base_url=hearth.api_url, timeout=60) as api:
        body = {"allowOut": ["8.8.8.8"]}
        missing = api.put(
            "/sandboxes/ixxxxxxxxxxxxxxxxxx0/network",
            json=body,
            headers={"X-API-Key": hearth.api_key},
        )
        assert missing.status_code == 404
        assert api.put("/sandboxes/any/network", json={}).status_code == 401


def _once_served(sbx, command: str) -> str:
    """`command`'s output once it succeeds (a server another sandbox just started)."""
    for _ in range(50):  # until the server listens; nothing timed
        code, out = _run(sbx, command)
        if code == 0:
            return out
        time.sleep(0.2)
    raise AssertionError(f"{command!r} never succeeded: {out}")


@contextlib.contextmanager
def _host_service() -> Iterator[int]:
    """An HTTP server of the host's on every address (its port), that answers anyone
    who reaches it: what no sandbox may."""
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client() as client:  # it does answer
            assert client.get(f"http://127.0.0.1:{server.server_port}/").status_code == 200
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def _wait_for(condition, *, attempts: int = 300) -> None:
    for _ in range(attempts):
        with contextlib.suppress(Exception):  # e.g. a file not written yet
            if condition():
                return
        time.sleep(0.1)
    raise AssertionError("the condition never held")


# --- sandbox to sandbox, and restarts ------------------------------------------------------


def test_a_sandbox_reaches_another_through_the_proxy(make, hearth: Hearth) -> None:
    server = make()
    server.commands.run("python3 -m http.server 8000 --directory /tmp", background=True)
    server.files.write("/tmp/hello.txt", "from the other sandbox")
    client = make()
    gateway = _run(client, "ip route | awk '/default/ {print $3}'")[1].strip()
    headers = f"-H 'E2b-Sandbox-Id: {server.sandbox_id}' -H 'E2b-Sandbox-Port: 8000'"
    url = f"http://{gateway}:{hearth.port}/hello.txt"
    assert _once_served(client, f"{CURL} -f {headers} {url}") == "from the other sandbox"
    # The way to the proxy is a destination like any other: a deny of all closes it.
    client.update_network({"deny_out": [ALL]})
    assert _run(client, f"{CURL} {headers} {url}")[0] != 0
    # And no other sandbox is reachable directly, at its own address.
    address = _run(server, "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")[1]
    address = address.strip()
    client.update_network({})
    assert not _reaches(client, f"http://{address}:8000/hello.txt")


def test_rules_survive_a_restart_of_the_server(internet: Internet) -> None:
    # Not pytest's tmp_path: the runtime's unprivileged ids must search every parent.
    data = Path(tempfile.mkdtemp(prefix="hearth-net-restart-", dir="/var/tmp"))
    data.chmod(0o755)
    try:
        _restart_keeps_rules(internet, data)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _restart_keeps_rules(internet: Internet, container_data_dir: Path) -> None:
    from api.conftest import serve_containers
    from e2b import Sandbox

    a, b = internet.site("site-a"), internet.site("site-b")
    ua, ub = a.url(by_address=True), b.url(by_address=True)
    options = {"host": "0.0.0.0", "sandbox_dns": (internet.dns,)}
    server, running = serve_containers(container_data_dir, **options)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in running.env().items():
            patch.setenv(name, value)
        patch.delenv("E2B_DEBUG", raising=False)
        try:
            named = Sandbox.create(
                "base", timeout=300, network={"allow_out": ["site-a.test"], "deny_out": [ALL]}
            )
            listed = Sandbox.create(
                "base", timeout=300, network={"allow_out": [a.address], "deny_out": [ALL]}
            )
        finally:
            assert server.stop(), "hearth serve did not stop"
        server, _ = serve_containers(container_data_dir, running.port, **options)
        try:
            _check(Sandbox.connect(listed.sandbox_id), {ua: True, ub: False})
            again = Sandbox.connect(named.sandbox_id)
            assert _site_of(again, "https://site-a.test/") == "site-a"
            _check(again, {"https://site-b.test/": False, ub: False})
            for sbx in (named, listed):
                Sandbox.kill(sbx.sandbox_id)
        finally:
            assert server.stop(), "hearth serve did not stop"


def test_transforms_apply_to_another_sandboxs_url(make, hearth: Hearth) -> None:
    echo = (
        "import http.server,json\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "  def do_GET(self):\n"
        "    body=json.dumps(dict(self.headers)).encode()\n"
        "    self.send_response(200); self.send_header('Content-Length',str(len(body)))\n"
        "    self.end_headers(); self.wfile.write(body)\n"
        "http.server.HTTPServer(('',8000),H).serve_forever()\n"
    )
    server = make()
    server.files.write("/tmp/echo.py", echo)
    server.commands.run("python3 /tmp/echo.py", background=True)
    host = server.get_host(8000)
    rules = {host: [{"transform": {"headers": {"X-Injected": "secret-2"}}}]}
    client = make(network={"rules": rules})
    gateway = _run(client, "ip route | awk '/default/ {print $3}'")[1].strip()
    url = f"http://{gateway}:{hearth.port}/"
    out = _once_served(client, f"{CURL} -f -H 'Host: {host}' {url}")
    assert json.loads(out).get("X-Injected") == "secret-2"
    # Another sandbox's requests get nothing of it.
    other = make()
    code, out = _run(other, f"{CURL} -f -H 'Host: {host}' {url}")
    assert code == 0 and "X-Injected" not in json.loads(out)


def test_the_npm_sdk_sets_and_updates_rules(hearth: Hearth, internet: Internet) -> None:
    from api.conftest import run_npm_script

    env = {
        **hearth.env(),
        "HEARTH_ALLOWED_URL": internet.site("site-a").url(by_address=True),
        "HEARTH_DENIED_URL": internet.site("site-b").url(by_address=True),
    }
    found = run_npm_script(Path(__file__).with_name("network.mjs"), env)
    assert found["created"] == [[True, False]]
    assert found["updated"] == [[False, True]]
    assert found["cleared"] == [[True, True]]
    (message,) = found["malformed"]
    assert "invalid denied CIDR example.com" in message


def test_a_name_that_points_at_the_host_opens_nothing(make, fresh_internet: Internet) -> None:
    # An allowed name whose record is one of the host's own (public-looking) addresses:
    # the proxy resolves it, and still never connects a sandbox to the host's services.
    with _host_service() as port:
        fresh_internet.set_record("host.test", [fresh_internet.gateway])
        sbx = make(network={"allow_out": ["host.test"], "deny_out": [ALL]})
        # Asked at an address that is not the host's, the kernel hands it to the proxy.
        other = fresh_internet.site("other").address
        _run(sbx, f"echo '{other} host.test' >> /etc/hosts", user="root")
        assert not _reaches(sbx, f"http://host.test:{port}/")
        assert not _reaches(sbx, f"http://{fresh_internet.gateway}:{port}/")
