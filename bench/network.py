"""Benchmark what network policy costs sandboxes, through `hearth serve` and the real E2B
Python SDK, against the tests' stand-in internet (tests/network/internet.py).

    uv run python bench/network.py [--runs N] [--megabytes M] [--requests R] [--creates C]
                                   [--only none|ip|domain ...]

Builds the stand-in internet (a namespace on 198.18.0.0/15 with web and DNS servers;
no packet leaves this machine), starts `hearth serve` in this process (a random port on
127.0.0.1, a throwaway data directory, no warm pool) with HEARTH_SANDBOX_DNS pointing at
the stand-in's DNS server, and measures, in three `base` sandboxes — no rules; IP rules
(`deny_out: 0.0.0.0/0, allow_out: site-a's address`); domain rules (`allow_out:
site-a.test, deny_out: 0.0.0.0/0`) — after checking that each one's rules do refuse
what they must:

1. download throughput: curl of M MB (200) from site-a's `/bytes/N`, HTTP and HTTPS,
   N runs (aim: IP rules lose <= 5% of the no-rules throughput);
2. small requests: R sequential GETs of site-a's `/` in a Python loop inside the
   sandbox, the time of each, on a new connection each (HTTP, HTTPS) and on one
   keep-alive connection (aim: domain rules add <= 1 ms per request);
   both beside the same from the host itself (the stand-in alone, no sandbox);
3. `Sandbox.create()` and create -> first command output with 0 and with 100 IP
   rules, C creates each.

Needs root. Every loop is bounded, every sandbox is killed and the stand-in removed even
on Ctrl-C or failure, and no number fails anything: the script prints tables and exits 0
unless it could not start at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envd import Row, guarded, print_table  # bench/envd.py
from sandbox import Bench, cleanup, interrupt_on_sigterm, loadavg, machine, verdict

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # before bench/: `network`

from network.internet import Internet  # noqa: E402 - tests/network/internet.py

if TYPE_CHECKING:
    from e2b import Sandbox

    from hearth.serve import ServerThread

MB = 1_000_000
AIM_LOSS = 5.0  # % of the no-rules throughput that IP rules may lose
AIM_ADDED_MS = 1.0  # ms that domain rules may add to a request
CA_IN_SANDBOX = "/tmp/stand-in-ca.pem"
# The sandbox's own CAs and the stand-in's: an egress proxy that terminates TLS presents
# certificates of a CA the sandbox trusts through its system bundle.
TRUST_IN_SANDBOX = "/tmp/stand-in-trust.pem"
SCRIPT_IN_SANDBOX = "/tmp/requests.py"
WARMUP = 10
COMMAND_TIMEOUT = 900  # s: a guard against a hung command, not a speed limit
HEADER = ["what", "n", "median", "p95", "p99", "note"]

# Sequential GETs of `/` from one site, each timed; prints {"address", "ms"} as JSON.
# Standard library only: it runs inside the sandbox with the image's python3.
REQUESTS_SCRIPT = r"""
import json, socket, ssl, sys, time

scheme, target, host, site, count, mode, cafile, warmup = sys.argv[1:9]
count, warmup = int(count), int(warmup)
port = 443 if scheme == "https" else 80
address = socket.getaddrinfo(target, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
tls = ssl.create_default_context(cafile=cafile) if scheme == "https" else None
expected = ('"site": "%s"' % site).encode()


def connect():
    sock = socket.create_connection((address, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return tls.wrap_socket(sock, server_hostname=host) if tls else sock


def request(sock, keep):
    line = "GET / HTTP/1.1\r\nHost: %s\r\nConnection: %s\r\n\r\n"
    sock.sendall((line % (host, "keep-alive" if keep else "close")).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [h.split(b":", 1)[1] for h in head.split(b"\r\n")
               if h.lower().startswith(b"content-length:")]
    while len(body) < int(lengths[0]):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk
    if expected not in body:
        raise RuntimeError("not %s: %r" % (site, body[:200]))


samples = []
kept = connect() if mode == "keepalive" else None
for i in range(warmup + count):
    started = time.perf_counter()
    if kept is not None:
        request(kept, True)
    else:
        sock = connect()
        request(sock, False)
        sock.close()
    if i >= warmup:
        samples.append((time.perf_counter() - started) * 1000)
print(json.dumps({"address": address, "ms": samples}))
"""


@dataclass(frozen=True)
class Policy:
    """One sandbox's rules, how it reaches site-a, and what it must not reach."""

    label: str
    network: dict[str, list[str]] | None
    target: str  # site-a's address, or a name the sandbox resolves itself
    refused: tuple[str, ...]  # URLs that must get no answer
    needs_dns: bool  # whether the sandbox must resolve the test names


def policies(net: Internet) -> list[Policy]:
    site_a, site_b, other = net.site("site-a"), net.site("site-b"), net.site("other")
    return [
        Policy("no rules", None, site_a.address, (), needs_dns=False),
        Policy(
            "IP rules",
            {"deny_out": ["0.0.0.0/0"], "allow_out": [site_a.address]},
            site_a.address,
            (site_b.url(by_address=True),),
            needs_dns=False,
        ),
        Policy(
            "domain rules",
            {"allow_out": [site_a.host], "deny_out": ["0.0.0.0/0"]},
            site_a.host,
            (other.url(), site_b.url(by_address=True)),
            needs_dns=True,
        ),
    ]


def hundred_ip_rules(net: Internet) -> dict[str, list[str]]:
    """site-a and 99 other addresses allowed, everything else denied: 101 entries."""
    others = [f"198.19.{i // 250}.{i % 250 + 1}" for i in range(99)]
    return {"deny_out": ["0.0.0.0/0"], "allow_out": [net.site("site-a").address, *others]}


# --- commands: in a sandbox or on the host ------------------------------------------------

Run = Callable[[str], str]  # a shell command -> its stdout; raises if it fails


def in_sandbox(sbx: Sandbox) -> Run:
    def run(command: str) -> str:
        return sbx.commands.run(command, timeout=COMMAND_TIMEOUT).stdout

    return run


def on_host(command: str) -> str:
    done = subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[:200]}")
    return done.stdout


def curl_download(run: Run, net: Internet, scheme: str, target: str, size: int, ca: str) -> float:
    """ms of one download of `size` bytes from site-a."""
    site = net.site("site-a")
    port = 443 if scheme == "https" else 80
    pinned = [] if target == site.host else ["--resolve", f"{site.host}:{port}:{target}"]
    argv = [
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
        "--cacert", ca, *pinned, site.url(f"/bytes/{size}", scheme=scheme),
    ]  # fmt: skip
    code, got, total = run(shlex.join(argv)).split()
    if code != "200" or int(got) != size:
        raise RuntimeError(f"HTTP {code}, {got} of {size} bytes")
    return float(total) * 1000


def request_times(
    run: Run,
    net: Internet,
    python: str,
    script: str,
    scheme: str,
    target: str,
    mode: str,
    count: int,
    ca: str,
) -> list[float]:
    """ms of each of `count` GETs of site-a's `/` (after WARMUP untimed ones)."""
    site = net.site("site-a")
    argv = [python, script, scheme, target, site.host, site.name, str(count), mode, ca,
            str(WARMUP)]  # fmt: skip
    return json.loads(run(shlex.join(argv)).strip().splitlines()[-1])["ms"]


def measures(
    run: Run, net: Internet, target: str, *, python: str, script: str, ca: str, args: Any
) -> dict[str, Row]:
    """Every measure of one place (a sandbox, or the host), by key."""
    size = args.megabytes * MB
    rows: dict[str, Row] = {}
    for scheme in ("http", "https"):
        rows[f"download {scheme}"] = guarded(
            Row(f"download {args.megabytes} MB, {scheme}"),
            lambda s=scheme: [
                curl_download(run, net, s, target, size, ca) for _ in range(args.runs + 1)
            ][1:],  # the first one warms the caches and the connection tracking up
        )
    for scheme, mode in (("http", "new"), ("https", "new"), ("http", "keepalive")):
        what = "one keep-alive connection" if mode == "keepalive" else "a new connection each"
        rows[f"request {scheme} {mode}"] = guarded(
            Row(f"GET /, {scheme}, {what}"),
            lambda s=scheme, m=mode: request_times(
                run, net, python, script, s, target, m, args.requests, ca
            ),
        )
    return rows


# --- checks: what a sandbox's rules refuse --------------------------------------------------


def sandbox_dns(run: Run, net: Internet) -> str:
    """'' if the sandbox resolves the test names through the stand-in; else why not."""
    resolv = run("cat /etc/resolv.conf")
    if net.dns not in resolv:
        servers = [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")]
        return f"its resolv.conf names {servers}, not {net.dns} (HEARTH_SANDBOX_DNS not applied)"
    return ""


def enforcement(run: Run, net: Internet, policy: Policy) -> str:
    """'' if site-a answers and every refused URL gets nothing (its site counting no
    request either); else what is wrong."""
    site = net.site("site-a")
    pinned = [] if policy.needs_dns else ["--resolve", f"{site.host}:80:{policy.target}"]
    probe = ["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"]
    code = run(shlex.join([*probe, *pinned, site.url()]) + " || true").strip()
    if code != "200":
        return f"site-a did not answer ({code or 'no status'})"
    problems = []
    for url in policy.refused:
        host = url.split("/")[2]
        name = next((s.name for s in net.sites.values() if host in (s.address, *s.names)), "")
        before = net.count(name)
        code = run(shlex.join([*probe, url]) + " || true").strip()
        if code != "000" or net.count(name) != before:
            problems.append(f"{url} answered ({code})")
    return "; ".join(problems)


def enforced(run: Run, *, net: Internet, policy: Policy) -> str:
    problem = enforcement(run, net, policy)
    return f"NO: {problem}" if problem else ""


# --- 3. creates -----------------------------------------------------------------------------


def create_times(
    bench: Bench, count: int, network: dict | None, check: Callable[[Run], str] | None = None
) -> tuple[list[float], list[float], str]:
    """ms of `Sandbox.create()`, and of create -> first command output, `count` times;
    and what `check` says of the first sandbox (after its times are taken)."""
    created, first, checked = [], [], ""
    options = {"network": network} if network else {}
    for i in range(count):
        started = time.perf_counter()
        sbx = bench.create(**options)
        created.append((time.perf_counter() - started) * 1000)
        try:
            if sbx.commands.run("echo ok").stdout.strip() != "ok":
                raise RuntimeError("echo ok did not print ok")
            first.append((time.perf_counter() - started) * 1000)
            if check is not None and i == 0:
                checked = check(in_sandbox(sbx))
        finally:
            bench.kill(sbx.sandbox_id)
    return created, first, checked


# --- main ---------------------------------------------------------------------------------------


def throughput_note(row: Row, size: int, baseline: Row | None, aim: bool) -> str:
    if row.error or not row.samples:
        return row.note
    note = f"{size / (row.median / 1000) / MB:.0f} MB/s"
    if baseline is not None and baseline.samples:
        loss = (1 - baseline.median / row.median) * 100  # of the no-rules throughput
        note += f", {loss:.1f}% below no rules" if loss > 0 else ", no loss"
        if aim:
            note += f" (aim <= {AIM_LOSS:.0f}%: {verdict(loss <= AIM_LOSS)})"
    return note


def latency_note(row: Row, baseline: Row | None, aim: bool) -> str:
    if row.error or not row.samples or baseline is None or not baseline.samples:
        return row.note
    added = row.median - baseline.median
    note = f"{added:+.3f} ms vs no rules"
    if aim:
        note += f" (aim <= {AIM_ADDED_MS:.0f} ms: {verdict(added <= AIM_ADDED_MS)})"
    return note


def bench_policy(bench: Bench, net: Internet, policy: Policy, args: Any) -> dict[str, Row]:
    print(f"\n[{policy.label}] network={json.dumps(policy.network)}", flush=True)
    options = {"network": policy.network} if policy.network else {}
    sbx = bench.create(**options)
    try:
        run = in_sandbox(sbx)
        assert net.ca_pem
        sbx.files.write(CA_IN_SANDBOX, net.ca_pem)
        run(f"cat /etc/ssl/certs/ca-certificates.crt {CA_IN_SANDBOX} > {TRUST_IN_SANDBOX}")
        sbx.files.write(SCRIPT_IN_SANDBOX, REQUESTS_SCRIPT)
        dns_problem = sandbox_dns(run, net)
        if dns_problem:
            print(f"  sandbox DNS: {dns_problem}", flush=True)
        if policy.needs_dns and dns_problem:
            return {"error": Row(policy.label, error="the sandbox does not use the stand-in's DNS")}
        if policy.network:
            problem = enforcement(run, net, policy)
            print(f"  rules enforced: {'NO: ' + problem if problem else 'yes'}", flush=True)
            if problem:
                return {"error": Row(policy.label, error=f"rules not enforced: {problem}")}
        return measures(
            run, net, policy.target, python="python3", script=SCRIPT_IN_SANDBOX,
            ca=TRUST_IN_SANDBOX, args=args,
        )  # fmt: skip
    finally:
        bench.kill(sbx.sandbox_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="container", choices=("container", "microvm"))
    parser.add_argument("--runs", type=int, default=5, help="downloads per row")
    parser.add_argument("--megabytes", type=int, default=200, help="size of a download")
    parser.add_argument("--requests", type=int, default=200, help="requests per row")
    parser.add_argument("--creates", type=int, default=20, help="creates per row")
    parser.add_argument(
        "--only", choices=("none", "ip", "domain"), action="append", help="these sandboxes"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/network.py needs root (sandboxes, namespaces)", file=sys.stderr)
        return 2
    for name in ("E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DOMAIN", "E2B_API_URL", "E2B_DEBUG"):
        os.environ.pop(name, None)
    print(f"network benchmark: runtime {args.runtime}, template base", flush=True)
    print(f"machine: {machine()}", flush=True)
    print(f"load average at start: {loadavg()}", flush=True)

    from hearth.serve import ServeOptions, ServerThread

    data_dir = Path(tempfile.mkdtemp(prefix="hearth-bench-network-", dir="/var/tmp"))
    data_dir.chmod(0o711)  # the runtime's unprivileged ids search every parent
    net: Internet | None = None
    server: ServerThread | None = None
    bench: Bench | None = None
    size = args.megabytes * MB
    try:
        with interrupt_on_sigterm():
            net = Internet().start()
            os.environ["HEARTH_SANDBOX_DNS"] = net.dns
            # The server's egress proxy verifies the sites it connects to for sandboxes.
            os.environ["SSL_CERT_FILE"] = str(net.trust_bundle)
            print(
                f"stand-in internet: {net.subnet} on {net.interface}, DNS {net.dns}, sites "
                + ", ".join(f"{s.name}={s.address}" for s in net.sites.values()),
                flush=True,
            )
            options: dict[str, Any] = {}
            if "sandbox_dns" in {f.name for f in dataclasses.fields(ServeOptions)}:
                options["sandbox_dns"] = (net.dns,)  # as well as HEARTH_SANDBOX_DNS
            server = ServerThread(
                ServeOptions(
                    host="127.0.0.1",
                    port=0,
                    data_dir=data_dir,
                    database_url=f"sqlite:///{data_dir}/hearth.db",
                    runtime=args.runtime,
                    pool_sizes={},  # every create is cold: with rules or not, the same path
                    **options,
                )
            )
            running = server.start()
            os.environ.update(running.environment())
            print(f"hearth serve at {running.api_url}, data in {data_dir}", flush=True)
            bench = Bench(args.runtime, data_dir, running.api_key or "")

            with tempfile.NamedTemporaryFile("w", suffix=".py") as script:
                script.write(REQUESTS_SCRIPT)
                script.flush()
                host = measures(
                    on_host, net, net.site("site-a").address, python=sys.executable,
                    script=script.name, ca=str(net.ca_path), args=args,
                )  # fmt: skip
            chosen = {"none": "no rules", "ip": "IP rules", "domain": "domain rules"}
            wanted = {chosen[o] for o in args.only} if args.only else set(chosen.values())
            results: dict[str, dict[str, Row]] = {}
            for policy in policies(net):
                if policy.label not in wanted:
                    continue
                try:
                    results[policy.label] = bench_policy(bench, net, policy, args)
                except Exception as e:  # noqa: BLE001 - a benchmark reports, goes on
                    results[policy.label] = {
                        "error": Row(policy.label, error=f"{type(e).__name__}: {e}"[:300])
                    }
            print_results(host, results, size)

            creates: list[list[str]] = []
            hundred = Policy(
                "100 IP rules",
                hundred_ip_rules(net),
                net.site("site-a").address,
                (net.site("site-b").url(by_address=True),),
                needs_dns=False,
            )
            for label, policy in (("0 rules", None), ("100 IP rules", hundred)):
                check = (
                    None if policy is None else functools.partial(enforced, net=net, policy=policy)
                )
                try:
                    made, first, problem = create_times(
                        bench, args.creates, policy.network if policy else None, check
                    )
                except Exception as e:  # noqa: BLE001
                    creates.append(Row(label, error=f"{type(e).__name__}: {e}"[:300]).cells())
                    continue
                note = "" if policy is None else f"rules enforced: {problem or 'yes'}"
                creates.append(Row(f"Sandbox.create(), {label}", made, note).cells())
                creates.append(Row(f"create -> first output, {label}", first).cells())
            print_table(
                f"Creating sandboxes with rules (ms, cold: no warm pool, {args.runtime})",
                HEADER,
                creates,
            )
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", flush=True)
    finally:
        cleanup(bench, server, data_dir, args.runtime)
        if net is not None:
            net.close()
            left = net.leftovers()
            print(f"stand-in internet removed{'' if not left else f'; LEFT: {left}'}")
    print(f"load average at end: {loadavg()}", flush=True)
    return 0


def print_results(host: dict[str, Row], results: dict[str, dict[str, Row]], size: int) -> None:
    none = results.get("no rules", {})
    for key, unit in (
        ("download http", "ms per download"),
        ("download https", "ms per download"),
        ("request http new", "ms per request"),
        ("request https new", "ms per request"),
        ("request http keepalive", "ms per request"),
    ):
        rows = []
        title = host[key].what
        for label, row in (("host (no sandbox)", host[key]), *_sandbox_rows(results, key)):
            row = Row(f"{label}", row.samples, row.note, row.error)
            if key.startswith("download"):
                aim = label == "IP rules"
                baseline = none.get(key) if label in ("IP rules", "domain rules") else None
                row.note = throughput_note(row, size, baseline, aim)
            else:
                aim = label == "domain rules"
                baseline = none.get(key) if label in ("IP rules", "domain rules") else None
                row.note = latency_note(row, baseline, aim)
            rows.append(row.cells())
        print_table(f"{title} ({unit})", HEADER, rows)


def _sandbox_rows(results: dict[str, dict[str, Row]], key: str) -> list[tuple[str, Row]]:
    found = []
    for label, rows in results.items():
        found.append((label, rows.get(key) or rows["error"]))
    return found


if __name__ == "__main__":
    sys.exit(main())
