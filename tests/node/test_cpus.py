"""Where container sandboxes' CPUs are placed (pure logic over a cgroup tree of files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.node.runtime.container.cpus import CpuPlacement, format_cpus, parse_cpus


def _tree(root: Path, cpus: str = "0-3", controllers: str = "cpu cpuset memory") -> Path:
    """A cgroup v2 tree with the cpuset controller and `cpus` to give."""
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cpuset.cpus.effective").write_text(cpus + "\n")
    return root


def _held(root: Path, name: str, cpus: str) -> None:
    """A sandbox cgroup (another node's, or one the runtime made) holding `cpus`."""
    (root / "hearth" / name).mkdir(parents=True, exist_ok=True)
    (root / "hearth" / name / "cpuset.cpus").write_text(cpus + "\n")


@pytest.mark.parametrize(
    ("text", "cpus", "formatted"),
    [("0", {0}, "0"), ("0-3", {0, 1, 2, 3}, "0-3"), ("0-1,4,6-7\n", {0, 1, 4, 6, 7}, "0-1,4,6-7")],
)
def test_cpu_lists(text: str, cpus: set[int], formatted: str) -> None:
    assert parse_cpus(text) == cpus
    assert format_cpus(frozenset(cpus)) == formatted


def test_sandboxes_spread_over_the_least_taken_cpus(tmp_path: Path) -> None:
    placement = CpuPlacement("hearth", _tree(tmp_path))
    assert [placement.place(name, 1) for name in "abcd"] == ["0", "1", "2", "3"]
    # Placed but without cgroups yet, and a cgroup of the same sandbox: counted once.
    _held(tmp_path, "a", "0")
    assert placement.place("e", 2) == "0-1"
    assert placement.place("f", 1) == "2"
    # A released sandbox's CPUs are free again; unpinned cgroups (all CPUs) weigh nothing.
    for name in "bcdef":
        placement.release(name)
    _held(tmp_path, "g", "0-3")
    assert placement.place("h", 2) == "1-2"
    # Placing a sandbox again (its next boot) forgets where it was.
    assert placement.place("h", 2) == "1-2"


def test_the_parent_cgroups_cpus_are_the_ones_given(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0-7")
    (root / "hearth").mkdir()
    (root / "hearth" / "cpuset.cpus.effective").write_text("4-5\n")
    placement = CpuPlacement("hearth", root)
    assert [placement.place(name, 1) for name in "ab"] == ["4", "5"]


def test_no_pinning_for_a_sandbox_as_large_as_the_host_or_without_cpusets(
    tmp_path: Path,
) -> None:
    assert CpuPlacement("hearth", _tree(tmp_path / "v2", "0-1")).place("a", 2) is None
    without = _tree(tmp_path / "none", "0-1", controllers="cpu memory")
    assert CpuPlacement("hearth", without).place("a", 1) is None
