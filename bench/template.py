"""Benchmark template builds and sandboxes of a built template through `hearth serve`
and the real E2B Python SDK.

    uv run python bench/template.py [--runs N]

Starts a local OCI registry (Debian's docker-registry on 127.0.0.1) holding an
Ubuntu-like image made from the Debian root the project builds, pushed as
`library/ubuntu:22.04`, and `hearth serve --runtime container` in this process with
`HEARTH_REGISTRY_MIRROR` pointing at the registry, so `from_image("ubuntu:22.04")` is
found there as it would be at a Docker Hub mirror. Then, with the SDK's `Template.build`:

1. a first build of `from_image("ubuntu:22.04") + apt_install + pip_install`;
2. rebuilds of the same template with every step cached (aim: <= 2 s);
3. rebuilds with the last step changed (another pip package each time);
4. create -> first command output from the new template, pooled (HEARTH_POOL_SIZE names
   it) and cold, beside `base` pooled and cold (aim: the same as base).

Needs root. Every loop is bounded, all traffic but the build steps' package downloads
(Debian's archive and PyPI) stays on 127.0.0.1, every sandbox is killed, and no number
fails anything: the script prints tables and exits 0 unless it could not start.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from envd import percentile, print_table  # bench/envd.py
from sandbox import loadavg, machine  # bench/sandbox.py

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

NAME = "bench-ubuntu-pip"
PIP_PACKAGES = ("six", "idna", "certifi", "packaging", "attrs", "pyparsing")
AIM_CACHED_S = 2.0


def template(pip_package: str):
    from e2b import Template

    return (
        Template()
        .from_image("ubuntu:22.04")
        # Debian 12's pip refuses system-wide installs (PEP 668); an Ubuntu 22.04 image
        # would not: the variable makes this image behave like one.
        .set_envs({"PIP_BREAK_SYSTEM_PACKAGES": "1"})
        .apt_install(["python3-pip"])
        .pip_install([pip_package])
    )


def build(pip_package: str) -> tuple[float, str]:
    """Seconds the build took, and the template's id."""
    from e2b import Template

    started = time.perf_counter()
    info = Template.build(template(pip_package), NAME, cpu_count=2, memory_mb=1024)
    return time.perf_counter() - started, info.template_id


def create_to_output(
    name: str, runs: int, before: Callable[[], None] = lambda: None, **options
) -> list[float]:
    from e2b import Sandbox

    samples = []
    for _ in range(runs):
        before()
        started = time.perf_counter()
        sandbox = Sandbox.create(name, **options)
        try:
            assert sandbox.commands.run("echo ok").stdout.strip() == "ok"
            samples.append((time.perf_counter() - started) * 1000)
        finally:
            sandbox.kill()
    return samples


def row(what: str, samples: list[float], unit: str, aim: str = "") -> list[str]:
    s = sorted(samples)
    return [
        what,
        str(len(s)),
        f"{statistics.median(s):.1f} {unit}",
        f"{percentile(s, 95):.1f}",
        f"{percentile(s, 99):.1f}",
        aim,
    ]


def filled(pooled: Callable[[], dict[str, int]], template_id: str, size: int) -> None:
    """Until the template's pool holds `size` members again (bounded: 60 s)."""
    for _ in range(600):
        if pooled().get(template_id, 0) >= size:
            return
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="creates per row")
    parser.add_argument("--rebuilds", type=int, default=5, help="rebuilds per row")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/template.py needs root (container sandboxes, mounts)", file=sys.stderr)
        return 2
    print(f"machine: {machine()}", flush=True)
    print(f"load average at start: {loadavg()}", flush=True)

    from template.conftest import built_root
    from template.registry import Registry, push_directory

    from hearth.serve import ServeOptions, ServerThread

    data_dir = Path(tempfile.mkdtemp(prefix="hearth-bench-template-", dir="/var/tmp"))
    data_dir.chmod(0o755)  # the runtime's unprivileged ids search every parent
    server = None
    with Registry() as registry:
        push_directory(built_root("debian"), registry.reference("library/ubuntu:22.04"))
        os.environ["HEARTH_REGISTRY_MIRROR"] = registry.host
        try:
            options = ServeOptions(
                host="127.0.0.1",
                port=0,
                data_dir=data_dir,
                runtime="container",
                pool_sizes={"base": 2, NAME: 2},
            )
            server = ServerThread(options)
            running = server.start()
            os.environ.update(running.environment())
            os.environ.pop("E2B_DEBUG", None)

            first, template_id = build(PIP_PACKAGES[0])
            cached = [build(PIP_PACKAGES[0])[0] for _ in range(args.rebuilds)]
            changed = [build(p)[0] for p in PIP_PACKAGES[1 : 1 + args.rebuilds]]
            print_table(
                "template builds (Template.build through the SDK, wall time)",
                ["what", "n", "median", "p95", "p99", "aim"],
                [
                    row(
                        "first build: from_image + apt_install + pip_install",
                        [first],
                        "s",
                        "E2B Embed reports 53-79 s",
                    ),
                    row("rebuild, every step cached", cached, "s", f"<= {AIM_CACHED_S:.0f} s"),
                    row("rebuild, last step changed", changed, "s"),
                ],
            )

            node = running.app.state.node  # type: ignore[attr-defined]
            # As bench/sandbox.py does: each pooled create finds the pool full.
            base_refilled = functools.partial(filled, node.pooled, "base", 2)
            refilled = functools.partial(filled, node.pooled, template_id, 2)
            rows = [
                row(
                    "base, pooled",
                    create_to_output("base", args.runs, before=base_refilled),
                    "ms",
                    "<= 100 p50",
                ),
                row(
                    "base, cold (no internet: no pooled sandbox fits)",
                    create_to_output("base", args.runs, allow_internet_access=False),
                    "ms",
                ),
                row(
                    f"{NAME}, pooled (HEARTH_POOL_SIZE={NAME}=2)",
                    create_to_output(NAME, args.runs, before=refilled),
                    "ms",
                    "same as base pooled",
                ),
                row(
                    f"{NAME}, cold (no internet)",
                    create_to_output(NAME, args.runs, allow_internet_access=False),
                    "ms",
                    "same as base cold",
                ),
            ]
            print_table(
                "create -> first command output (Sandbox.create + commands.run)",
                ["what", "n", "median", "p95", "p99", "aim"],
                rows,
            )
        finally:
            if server is not None:
                server.stop()
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
