"""Benchmark snapshots and forks through `hearth serve` and the real E2B Python SDK.

    uv run python bench/snapshot.py [--runtime container|microvm] [--runs N]

1. `create_snapshot()` of a running `base` sandbox against the data it changed since
   its start (0, 100 MB, 1 GB written; aim on containers: <= 100 ms + 1 s per GB);
2. create -> first command output from a snapshot, cold and pooled (the node keeps
   sandboxes of the snapshot started ahead, as HEARTH_POOL_SIZE does for templates),
   beside the same from `base` (aim: within 1.5x of the template's);
3. `fork()` of 1 and of 10 copies, wall time until all answer.

Needs root. Every sandbox and snapshot is deleted; no number fails anything: the script
prints tables and exits 0 unless it could not start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from envd import print_table  # bench/envd.py
from sandbox import loadavg, machine  # bench/sandbox.py
from template import create_to_output, filled, row  # bench/template.py

MB = 1 << 20
HEADER = ["what", "n", "median", "p95", "p99", "aim"]


def snapshot_times(megabytes: int, runs: int) -> list[float]:
    """ms of `create_snapshot()` of a sandbox that wrote `megabytes` since its start."""
    from e2b import Sandbox

    samples = []
    for _ in range(runs):
        sandbox = Sandbox.create("base")
        try:
            if megabytes:
                sandbox.commands.run(
                    f"head -c {megabytes * MB} /dev/urandom > /home/user/blob", timeout=600
                )
            started = time.perf_counter()
            snapshot = sandbox.create_snapshot()
            samples.append((time.perf_counter() - started) * 1000)
            Sandbox.delete_snapshot(snapshot.snapshot_id)
        finally:
            sandbox.kill()
    return samples


def fork_times(count: int, runs: int) -> list[float]:
    from e2b import Sandbox

    samples = []
    source = Sandbox.create("base")
    try:
        for _ in range(runs):
            started = time.perf_counter()
            forks = source.fork(count=count, timeout=120)
            elapsed = (time.perf_counter() - started) * 1000
            failed = [f for f in forks if not isinstance(f, Sandbox)]
            for fork in forks:
                if isinstance(fork, Sandbox):
                    fork.kill()
            if failed:
                print(f"fork of {count}: {len(failed)} failed: {failed[0]}", flush=True)
                continue
            samples.append(elapsed)
    finally:
        source.kill()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="container", choices=("container", "microvm"))
    parser.add_argument("--runs", type=int, default=10, help="samples per row")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/snapshot.py needs root (sandboxes, mounts)", file=sys.stderr)
        return 2
    print(f"machine: {machine()}", flush=True)
    print(f"load average at start: {loadavg()}", flush=True)
    from e2b import Sandbox

    from hearth.serve import ServeOptions, ServerThread
    from hearth.template.artifact import Artifact

    data_dir = Path(tempfile.mkdtemp(prefix="hearth-bench-snapshot-", dir="/var/tmp"))
    data_dir.chmod(0o755)  # the runtime's unprivileged ids search every parent
    server = None
    try:
        options = ServeOptions(
            host="127.0.0.1", port=0, data_dir=data_dir, runtime=args.runtime, pool_sizes={}
        )
        server = ServerThread(options)
        running = server.start()
        os.environ.update(running.environment())
        os.environ.pop("E2B_DEBUG", None)
        node = running.app.state.node  # type: ignore[attr-defined]
        accel = getattr(node.runtime, "accel", "none: containers")
        label = f"{args.runtime}, accelerator {accel}"
        few = max(2, args.runs // 3)
        print_table(
            f"create_snapshot() of a running base sandbox ({label})",
            HEADER,
            [
                row("0 written", snapshot_times(0, args.runs), "ms", "<= 100 ms"),
                row("100 MB written", snapshot_times(100, few), "ms", "<= 200 ms"),
                row("1 GB written", snapshot_times(1024, few), "ms", "<= 1100 ms"),
            ],
        )

        source = Sandbox.create("base")
        source.files.write("/home/user/state", "snapshotted")
        snapshot = source.create_snapshot()
        source.kill()
        store = running.store
        template = snapshot.snapshot_id.split(":")[0]
        rows = [
            row("base, cold", create_to_output("base", args.runs), "ms"),
            row(
                "from the snapshot, cold",
                create_to_output(snapshot.snapshot_id, args.runs),
                "ms",
                "<= 1.5x base cold",
            ),
        ]
        if args.runtime == "container":
            build = server.call(store.tagged_build(template))
            artifact = Artifact.from_json(build.artifact)
            server.call(node.warm(template, artifact=artifact, cpu_count=2, memory_mb=512, size=2))
            rows.append(
                row(
                    "from the snapshot, pooled (2 kept started)",
                    create_to_output(
                        snapshot.snapshot_id,
                        args.runs,
                        before=lambda: filled(node.pooled, template, 2),
                    ),
                    "ms",
                    "<= 1.5x base pooled",
                )
            )
        print_table(f"create -> first command output from a snapshot ({label})", HEADER, rows)
        Sandbox.delete_snapshot(snapshot.snapshot_id)

        print_table(
            f"fork() of a running base sandbox, until every copy answers ({label})",
            HEADER,
            [
                row("fork of 1", fork_times(1, args.runs), "ms"),
                row("fork of 10", fork_times(10, few), "ms"),
            ],
        )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
