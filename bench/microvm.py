"""Benchmark the microvm runtime's VMM mechanics on this host.

    uv run python bench/microvm.py [--runs N] [--clones 8,32] [--sizes 256,512,1024]

Runs a LocalNode(runtime="microvm") in this process over a throwaway data directory
under /var/tmp (template `debian`, 1 vCPU) and measures, labelled with the accelerator
(KVM, or TCG software emulation where the host has no vmx/svm):

1. clone to running: a pre-spawned VMM (pool) and a cold one (new QEMU): from the
   request to `cont` (device state loaded over the template RAM), and to envd having
   taken /init (clock, entropy, token);
2. create -> first command: `node.create()` then `commands.run("true")` through the
   real e2b SDK in debug mode;
3. pause (full state to a file) and resume to envd ready, against guest memory size,
   with a Python process running in the guest;
4. PSS per idle clone (smaps_rollup of the QEMU processes) with 8 and 32 clones.

Needs root. Every sandbox made is killed, even on failure; no number fails anything.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from envd import print_table  # noqa: E402  (bench/envd.py)

from hearth.node.interface import SandboxSpec  # noqa: E402
from hearth.node.local import LocalNode  # noqa: E402

POOL = "10.215.0.0/16"
TEMPLATE = "debian"
ENVD_PORT = 49983
COUNTER = (
    "nohup python3 -c 'import time\ni = 0\nwhile True:\n    i += 1\n    time.sleep(0.05)'"
    " >/dev/null 2>&1 &"
)


def spec(memory_mb: int = 512) -> SandboxSpec:
    return SandboxSpec(
        sandbox_id=secrets.token_hex(10),
        template_id=TEMPLATE,
        cpu_count=1,
        memory_mb=memory_mb,
        envd_access_token=secrets.token_hex(16),
    )


def sdk(address, token: str):
    from e2b import AsyncSandbox, ConnectionConfig
    from packaging.version import Version

    config = ConnectionConfig(
        debug=True,
        sandbox_url=f"http://{address.host}:{address.port(ENVD_PORT)}",
        extra_sandbox_headers={"X-Access-Token": token},
    )
    return AsyncSandbox(
        sandbox_id="debug",
        sandbox_domain=None,
        envd_version=Version("0.6.13"),
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=config,
    )


def stats(samples: list[float]) -> list[str]:
    s = sorted(samples)
    return [str(len(s)), f"{statistics.median(s):.1f}", f"{s[0]:.1f}", f"{s[-1]:.1f}"]


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_pool(node: LocalNode, size: int) -> None:
    for _ in range(600):
        if node.runtime.vmms.count() >= size:
            return
        await asyncio.sleep(0.05)


async def clone_times(node: LocalNode, runs: int, pooled: bool) -> tuple[list, list, list]:
    await node.runtime.vmms.resize(1 if pooled else 0)
    running, ready, first = [], [], []
    for _ in range(runs):
        if pooled:
            await wait_pool(node, 1)
        s = spec()
        started = time.monotonic()
        address = await node.create(s)
        created = time.monotonic()
        try:
            await sdk(address, s.envd_access_token).commands.run("true", timeout=120)
            done = time.monotonic()
            t = node.sandbox(s.sandbox_id).timings
            running.append(float(t["running_ms"]))
            ready.append(float(t["ready_ms"]))
            first.append((done - started) * 1000)
            del created
        finally:
            await node.kill(s.sandbox_id)
    return running, ready, first


async def pause_resume(node: LocalNode, sizes: list[int], runs: int) -> list[list[str]]:
    await node.runtime.vmms.resize(0)
    rows = []
    for size in sizes:
        pauses, resumes, running, states = [], [], [], []
        s = spec(size)
        address = await node.create(s)
        try:
            await sdk(address, s.envd_access_token).commands.run(COUNTER, timeout=120)
            for _ in range(runs):
                await asyncio.sleep(1)
                started = time.monotonic()
                await node.pause(s.sandbox_id, memory=True)
                pauses.append((time.monotonic() - started) * 1000)
                state = node.runtime.sandboxes_dir / s.sandbox_id / "memory.state"
                states.append(state.stat().st_size / 2**20)
                started = time.monotonic()
                await node.resume(s)
                resumes.append((time.monotonic() - started) * 1000)
                running.append(float(node.sandbox(s.sandbox_id).timings["running_ms"]))
        finally:
            await node.kill(s.sandbox_id)
        rows.append(
            [
                f"{size}",
                f"{statistics.median(states):.0f}",
                f"{statistics.median(pauses):.0f} ({min(pauses):.0f}-{max(pauses):.0f})",
                f"{statistics.median(running):.0f} ({min(running):.0f}-{max(running):.0f})",
                f"{statistics.median(resumes):.0f} ({min(resumes):.0f}-{max(resumes):.0f})",
            ]
        )
    return rows


async def idle_pss(node: LocalNode, count: int) -> list[str]:
    await node.runtime.vmms.resize(0)
    specs = [spec() for _ in range(count)]
    made = []
    try:
        for s in specs:
            await node.create(s)
            made.append(s)
        await asyncio.sleep(5)
        pids = [node.sandbox(s.sandbox_id).vmm.pid for s in made]
        pss = [pss_mib(p) for p in pids]
        return [str(count), f"{statistics.mean(pss):.1f}", f"{min(pss):.1f}", f"{max(pss):.1f}"]
    finally:
        await asyncio.gather(*(node.kill(s.sandbox_id) for s in made), return_exceptions=True)


async def main(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="hearth-bench-microvm-", dir="/var/tmp"))
    node = LocalNode(data_dir / "node", runtime="microvm", network_pool=POOL)
    try:
        await node.start()
        accel = node.runtime.accel.upper()
        print(
            f"host: {platform.node()} {os.cpu_count()} CPUs, Linux {platform.release()};"
            f" accelerator: {accel}; template {TEMPLATE}, 1 vCPU",
            flush=True,
        )
        sizes = [int(x) for x in args.sizes.split(",")]
        for size in sorted({512, *sizes}):  # take the snapshots before timing anything
            s = spec(size)
            await node.create(s)
            await node.kill(s.sandbox_id)

        rows = []
        for pooled in (True, False):
            running, ready, first = await clone_times(node, args.runs, pooled)
            label = "pooled VMM" if pooled else "cold VMM"
            rows.append([f"{label}: request -> running (cont)", *stats(running)])
            rows.append([f"{label}: request -> envd ready (/init done)", *stats(ready)])
            rows.append([f"{label}: create -> first command (SDK)", *stats(first)])
        print_table(
            f"Clone from the template snapshot, 512 MiB ({accel}), ms",
            ["what", "n", "median", "min", "max"],
            rows,
        )

        print_table(
            f"Pause with memory and resume ({accel}), a Python process running, ms",
            ["guest MiB", "state MiB", "pause", "resume -> running", "resume -> envd ready"],
            await pause_resume(node, sizes, args.pause_runs),
        )

        rows = [await idle_pss(node, int(n)) for n in args.clones.split(",")]
        print_table(
            f"PSS per idle 512 MiB clone ({accel}, QEMU process, after 5 s idle), MiB",
            ["clones", "mean", "min", "max"],
            rows,
        )
    finally:
        await node.close()
        shutil.rmtree(data_dir, ignore_errors=True)
        from hearth.node.runtime.microvm.snapshot import sweep_memory

        sweep_memory()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pause-runs", type=int, default=5)
    parser.add_argument("--clones", default="8,32")
    parser.add_argument("--sizes", default="256,512,1024")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parser.parse_args()))
