"""What a container sandbox sees of its own limits through the released `e2b` SDK, against
a real `hearth serve` with the container runtime: `free`, `nproc`, /proc/meminfo and the
SDK's metrics say the sandbox's memory and vCPUs (lxcfs and its cpuset), in a template's
build steps too, and each sandbox its own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import Sandbox, Template
from node.conftest import node_leaks

from .conftest import Hearth, served_containers

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: containers and network slots"),
]

MEM_TOTAL_KIB = "awk '/^MemTotal:/ {print $2}' /proc/meminfo"
FREE_TOTAL_MIB = "free -m | awk '/^Mem:/ {print $2}'"


@pytest.fixture(scope="module")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-lxcfs-") as info:
        yield info
    # The server detached its node with no sandbox left: nothing kept its daemon.
    node_dir = Path(info.database_url.removeprefix("sqlite:///")).parent / "node"
    assert node_leaks(node_dir) == {}


def _sh(sandbox: Sandbox, command: str) -> str:
    return sandbox.commands.run(command).stdout.strip()


def test_sandboxes_and_build_steps_see_their_own_memory_and_cpus(hearth: Hearth) -> None:
    name = f"lxcfs-{uuid.uuid4().hex[:10]}"
    # The step's command is unique to this run, so that it runs (no cached layer).
    template = (
        Template()
        .from_template("base")
        .run_cmd(
            f"echo {name} >/dev/null && nproc > /home/user/build-nproc"
            f" && {MEM_TOTAL_KIB} > /home/user/build-mem"
        )
    )
    Template.build(template, name, cpu_count=1, memory_mb=768)
    host_cpus = len(os.sched_getaffinity(0))
    small, base = Sandbox.create(name), Sandbox.create("base")  # base: 2 vCPUs, 512 MiB
    try:
        assert _sh(small, "cat /home/user/build-nproc") == "1"
        assert _sh(small, "cat /home/user/build-mem") == str(768 * 1024)
        for sandbox, cpus, memory_mb in ((small, 1, 768), (base, 2, 512)):
            info = sandbox.get_info()
            assert (info.cpu_count, info.memory_mb) == (cpus, memory_mb)
            assert _sh(sandbox, FREE_TOTAL_MIB) == str(memory_mb)
            assert _sh(sandbox, MEM_TOTAL_KIB) == str(memory_mb * 1024)
            assert _sh(sandbox, "nproc") == str(min(cpus, host_cpus))
            assert _sh(sandbox, "python3 -c 'import os; print(os.cpu_count())'") == str(
                min(cpus, host_cpus)
            )
            # envd's metrics read the same files.
            metrics = sandbox.get_metrics()[-1]
            assert metrics.mem_total == memory_mb * 2**20
            assert metrics.cpu_count == min(cpus, host_cpus)
    finally:
        small.kill()
        base.kill()
