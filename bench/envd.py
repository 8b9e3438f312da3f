"""Benchmark envd through the real E2B Python SDK: latency, throughput, start, memory.

    uv run python bench/envd.py [--root debian|busybox|all] [--runs N] [--quick]

Needs root (envd runs in user, mount and pid namespaces through IsolatedEnvd). Every
loop is bounded, all traffic stays on 127.0.0.1, and no number fails anything: the
script prints tables and exits 0 unless it could not start at all.

What is compared with what (DESIGN.md §Testing): the SDK runs every command as
`/bin/bash -l -c CMD` as the sandbox's user, so the baseline for `commands.run("true")`
is `bash -l -c true` spawned inside the same isolated root, as uid 1000, with HOME,
USER, LOGNAME and PATH set as envd sets them. It is measured two ways:
- per spawn from the host through `nsenter` into envd's namespaces (includes nsenter's
  own fork/exec/setns, so it slightly flatters envd);
- amortized: one `nsenter` runs a shell loop of N spawns, total / N.
The ratio of the SDK round trip to each baseline is printed; the aim is <= 1.3x.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
USER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/home/user",
    "USER": "user",
    "LOGNAME": "user",
}


# --- numbers and tables ----------------------------------------------------------------


def percentile(sorted_samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted samples."""
    if not sorted_samples:
        return float("nan")
    rank = max(1, min(len(sorted_samples), round(q / 100 * len(sorted_samples) + 0.5)))
    return sorted_samples[rank - 1]


@dataclass
class Row:
    what: str
    samples: list[float] = field(default_factory=list)  # milliseconds
    note: str = ""
    error: str = ""

    def cells(self) -> list[str]:
        if self.error:
            return [self.what, "-", "-", "-", "-", f"FAILED: {self.error}"]
        s = sorted(self.samples)
        return [
            self.what,
            str(len(s)),
            f"{statistics.median(s):.2f}",
            f"{percentile(s, 95):.2f}",
            f"{percentile(s, 99):.2f}",
            self.note,
        ]

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}\n{line}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(line, flush=True)


def timed(fn: Callable[[], object], runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return samples


def guarded(row: Row, fn: Callable[[], list[float]]) -> Row:
    try:
        row.samples = fn()
    except Exception as e:  # noqa: BLE001 - a benchmark reports, it does not stop
        row.error = f"{type(e).__name__}: {e}"[:160]
    return row


# --- envd processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port: int) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status
        finally:
            conn.close()
    except OSError:
        return None


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(Rss, Pss) in KiB from /proc/PID/smaps_rollup."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key] = int(rest.split()[0])
    return values["Rss"], values["Pss"]


def memory_rows(label: str, pid: int) -> list[list[str]]:
    """One row per process of envd's tree, plus the total PSS."""
    rows = []
    pids = process_tree(pid)
    total_pss = 0
    for i, p in enumerate(pids):
        try:
            rss, pss = memory_kib(p)
        except OSError:
            continue
        total_pss += pss
        role = "envd" if len(pids) == 1 else f"envd process {i + 1}"
        rows.append([label, role, str(p), f"{rss / 1024:.1f}", f"{pss / 1024:.1f}"])
    if len(rows) > 1:
        rows.append([label, "total", "", "", f"{total_pss / 1024:.1f}"])
    return rows


@contextlib.contextmanager
def direct_envd(bundle: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, float]]:
    """The bundle's envd started on the host (no namespaces); yields (proc, port, ms to
    first 204 from /health)."""
    from hearth.node.guest.envd_bundle import envd_command

    port = free_port()
    t = time.perf_counter()
    proc = subprocess.Popen(
        envd_command(str(bundle), "127.0.0.1", port),
        env={},
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(20000):  # ~20 s at most
            if health(port) == 204:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"envd exited with {proc.returncode}")
            time.sleep(0.001)
        else:
            raise RuntimeError("envd did not answer /health")
        yield proc, port, (time.perf_counter() - t) * 1000
    finally:
        proc.kill()
        proc.wait()


def raw_get(client, url: str, path: str) -> int:
    """GET /files asking for no compression; bytes received. `client` is kept open so
    the row holds no TLS-context or connection setup (httpx builds both per Client)."""
    with client.stream(
        "GET", f"{url}/files", params={"path": path}, headers={"Accept-Encoding": "identity"}
    ) as r:
        r.raise_for_status()
        return sum(len(c) for c in r.iter_raw())


# --- the measurements --------------------------------------------------------------------------


def nsenter_argv(pid: int | str, command: str) -> list[str]:
    """Run `command` with /bin/bash -l -c inside envd's sandbox as uid 1000, as envd would."""
    env = [f"{k}={v}" for k, v in USER_ENV.items()]
    return [
        "nsenter",
        "-t",
        str(pid),
        "-U",
        "-m",
        "-p",
        "-r",
        f"-w/proc/{pid}/root/home/user",
        "--setuid",
        "1000",
        "--setgid",
        "1000",
        "--",
        "/usr/bin/env",
        "-i",
        *env,
        "/bin/bash",
        "-l",
        "-c",
        command,
    ]


def bench_root(kind: str, runs: int, big_runs: int, rows: list[Row], mem: list[list[str]]):
    from e2b import Sandbox

    from hearth.node.runtime.isolated import IsolatedEnvd

    t = time.perf_counter()
    with IsolatedEnvd(kind, port=0) as env:
        start_ms = (time.perf_counter() - t) * 1000
        rows.append(Row(f"[{kind}] IsolatedEnvd start to /health 204 (1 run)", [start_ms]))
        time.sleep(0.5)
        mem.extend(memory_rows(f"{kind}, isolated, fresh", env.pid))
        sbx = Sandbox.create(debug=True, sandbox_url=env.url)

        run_true = guarded(
            Row(f"[{kind}] SDK commands.run('true')"),
            lambda: timed(lambda: sbx.commands.run("true"), runs, warmup=10),
        )
        rows.append(run_true)

        per_spawn = guarded(
            Row(f"[{kind}] bash -l -c true, per spawn via nsenter"),
            lambda: timed(lambda: subprocess.run(nsenter_argv(env.pid, "true"), check=True), runs),
        )
        rows.append(per_spawn)

        def amortized() -> list[float]:
            n = runs
            loop = f"i=0; while [ $i -lt {n} ]; do /bin/bash -l -c true; i=$((i+1)); done"
            samples = []
            for _ in range(3):
                t0 = time.perf_counter()
                subprocess.run(nsenter_argv(env.pid, loop), check=True)
                samples.append((time.perf_counter() - t0) * 1000 / n)
            return samples

        amort = guarded(
            Row(f"[{kind}] bash -l -c true, amortized loop of {runs} (3 loops)"), amortized
        )
        rows.append(amort)

        def inside_via_sdk() -> list[float]:
            n = runs
            loop = f"i=0; while [ $i -lt {n} ]; do /bin/bash -l -c true; i=$((i+1)); done"
            samples = []
            for _ in range(3):
                t0 = time.perf_counter()
                sbx.commands.run(loop, timeout=0)
                samples.append(((time.perf_counter() - t0) * 1000 - run_true.median) / n)
            return samples

        rows.append(
            guarded(
                Row(f"[{kind}] bash -l -c true, loop run by envd, minus one run (3 loops)"),
                inside_via_sdk,
            )
        )
        for base in (per_spawn, amort):
            if run_true.samples and base.samples:
                run_true.note += (
                    f"{run_true.median / base.median:.2f}x vs {base.what[len(kind) + 3 :]}; "
                )

        def first_output() -> list[float]:
            samples = []
            for _ in range(runs // 2):
                t0 = time.perf_counter()
                handle = sbx.commands.run("echo first; exit 0", background=True)
                for stdout, _, _ in handle:
                    if stdout:
                        samples.append((time.perf_counter() - t0) * 1000)
                        break
                handle.wait()
            return samples

        rows.append(
            guarded(Row(f"[{kind}] background command: call to first stdout"), first_output)
        )

        import httpx

        client = httpx.Client(timeout=60)
        for size, n in ((MiB, max(runs // 10, 5)), (100 * MiB, big_runs)):
            data = os.urandom(size)
            path = f"/home/user/bench-{size}.bin"
            label = f"{size // MiB} MB"
            w = guarded(
                Row(f"[{kind}] files.write {label} (bytes)"),
                lambda data=data, path=path, n=n: timed(
                    lambda: sbx.files.write(path, data), n, warmup=1
                ),
            )
            r = guarded(
                Row(f"[{kind}] files.read {label} (format=bytes)"),
                lambda path=path, n=n: timed(
                    lambda: sbx.files.read(path, format="bytes"), n, warmup=1
                ),
            )
            # The SDK's httpx asks for `Accept-Encoding: gzip, deflate`, so envd compresses
            # downloads; a plain GET asking for identity shows the transfer alone.
            raw = guarded(
                Row(f"[{kind}] GET /files {label}, Accept-Encoding: identity (httpx)"),
                lambda path=path, n=n: timed(lambda: raw_get(client, env.url, path), n, warmup=1),
            )
            for row in (w, r, raw):
                if row.samples:
                    row.note = f"{size / MiB / (row.median / 1000):.0f} MB/s at the median"
            rows.extend((w, r, raw))
            with contextlib.suppress(Exception):
                sbx.files.remove(path)

        client.close()
        time.sleep(1.0)  # idle
        mem.extend(memory_rows(f"{kind}, isolated, after the runs, idle 1 s", env.pid))


def bench_cold_start(runs: int, rows: list[Row], mem: list[list[str]]) -> None:
    from hearth.node.guest.envd_bundle import ensure_bundle

    bundle = ensure_bundle()

    def one() -> float:
        with direct_envd(bundle) as (_, _, ms):
            return ms

    rows.append(
        guarded(
            Row("bundle envd started directly: spawn to first /health 204"),
            lambda: [one() for _ in range(runs)],
        )
    )
    try:
        with direct_envd(bundle) as (proc, _, _):
            time.sleep(0.5)
            mem.extend(memory_rows("direct (host), fresh", proc.pid))
    except Exception as e:  # noqa: BLE001
        mem.append(["direct (host), fresh", f"FAILED: {e}", "", "", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", choices=("debian", "busybox", "all"), default="all")
    parser.add_argument("--runs", type=int, default=200, help="samples per latency row")
    parser.add_argument("--quick", action="store_true", help="few samples, for a smoke run")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/envd.py needs root (user, mount and pid namespaces)", file=sys.stderr)
        return 2
    runs = 20 if args.quick else max(args.runs, 10)
    big_runs = 1 if args.quick else 3
    for name in ("E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DOMAIN", "E2B_API_URL"):
        os.environ.pop(name, None)
    os.environ["E2B_DEBUG"] = "true"

    rows: list[Row] = []
    mem: list[list[str]] = []
    kinds = ("debian", "busybox") if args.root == "all" else (args.root,)
    print(f"envd benchmark: roots {', '.join(kinds)}, {runs} samples per latency row", flush=True)
    for kind in kinds:
        try:
            bench_root(kind, runs, big_runs, rows, mem)
        except Exception as e:  # noqa: BLE001
            rows.append(Row(f"[{kind}] setup", error=f"{type(e).__name__}: {e}"[:200]))
    bench_cold_start(max(runs // 5, 5), rows, mem)

    print_table(
        "Latency (ms)",
        ["what", "n", "median", "p95", "p99", "note"],
        [r.cells() for r in rows],
    )
    print_table(
        "envd memory (MiB, /proc/PID/smaps_rollup)", ["when", "process", "pid", "RSS", "PSS"], mem
    )
    print("\nbaseline command: " + shlex.join(nsenter_argv("ENVD_PID", "true")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
