"""The pure parts of sandbox metrics: the time ranges infra accepts and its steps, the
points of a long range, envd's answer, the metrics retention setting, and the host's
reading of a cgroup v2 tree (this project's machines are cgroup v1, which the node
tests read for real)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hearth import config
from hearth.api._metrics import MAX_UNIX, RangeError, at_step, step, time_range
from hearth.node.usage import ContainerMeter, ContainerProbe, from_envd
from hearth.store import SandboxMetric

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_range_defaults_and_is_checked_as_infra_checks_it() -> None:
    assert time_range(None, None, T0, T0 + timedelta(hours=1)) == (T0, T0 + timedelta(hours=1))
    start = int(T0.timestamp())
    assert time_range(start, start + 10, T0, T0) == (T0, T0 + timedelta(seconds=10))
    assert time_range(MAX_UNIX, MAX_UNIX, T0, T0)[0].year == 2299
    with pytest.raises(RangeError, match="^start time cannot be after 2299-12-31 23:59:59"):
        time_range(MAX_UNIX + 1, None, T0, T0)
    with pytest.raises(RangeError, match="^end time cannot be after 2299-12-31 23:59:59"):
        time_range(None, MAX_UNIX + 1, T0, T0)
    with pytest.raises(RangeError, match="^start time cannot be after end time$"):
        time_range(start + 1, start, T0, T0)
    with pytest.raises(RangeError, match="after end time"):
        time_range(start + 1, None, T0, T0)  # the default end is before it


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (timedelta(minutes=59), timedelta(seconds=5)),
        (timedelta(hours=1), timedelta(seconds=30)),
        (timedelta(hours=11), timedelta(minutes=1)),
        (timedelta(hours=23), timedelta(minutes=2)),
        (timedelta(days=6), timedelta(minutes=5)),
        (timedelta(days=7), timedelta(minutes=15)),
        (timedelta(days=3000), timedelta(minutes=15)),
    ],
)
def test_steps_keep_a_range_under_a_thousand_points(length, expected) -> None:
    assert step(T0, T0 + length) == expected


def _sample(seconds: int, cpu: float, mem: int) -> SandboxMetric:
    return SandboxMetric("s", T0 + timedelta(seconds=seconds), 2, cpu, mem, 512, 1, mem, 900)


def test_a_long_range_gives_one_point_per_step() -> None:
    samples = [_sample(s, cpu=float(s), mem=100 + s) for s in range(0, 60, 5)]
    points = at_step(samples, T0, timedelta(seconds=30))
    assert [p.timestamp - T0 for p in points] == [timedelta(seconds=25), timedelta(seconds=55)]
    assert [p.cpu_used_pct for p in points] == [12.5, 42.5]  # the mean of each step
    assert [p.mem_used for p in points] == [125, 155]  # the most of each step
    assert at_step(samples, T0, timedelta(seconds=5)) == samples  # already one per step


def test_envds_answer_is_a_sample_at_the_hosts_time() -> None:
    body = {
        "ts": 5,
        "cpu_count": 2,
        "cpu_used_pct": 3.5,
        "mem_total": 10,
        "mem_used": 4,
        "mem_cache": 1,
        "mem_total_mib": 0,
        "mem_used_mib": 0,
        "disk_used": 7,
        "disk_total": 70,
    }
    usage = from_envd(body, 1234.5)
    assert (usage.timestamp, usage.cpu_count, usage.mem_used, usage.disk_total) == (
        1234.5,
        2,
        4,
        70,
    )
    for bad in ([], {"cpu_count": 2}, {**body, "mem_used": None}):
        with pytest.raises(ValueError):
            from_envd(bad, 0)


def test_the_retention_is_a_setting() -> None:
    assert config.settings({}).metrics_retention_hours == 24
    env = {"HEARTH_METRICS_RETENTION_HOURS": "1.5"}
    assert config.settings(env).metrics_retention_hours == 1.5
    for bad in ("0", "-3", "soon", "inf"):
        with pytest.raises(ValueError, match="HEARTH_METRICS_RETENTION_HOURS"):
            config.settings({"HEARTH_METRICS_RETENTION_HOURS": bad})


def _cgroup_v2(root: Path, usage_usec: int, memory: int) -> None:
    group = root / "hearth" / "sbx"
    group.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (group / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\n")
    (group / "cpu.max").write_text("100000 100000\n")
    (group / "memory.current").write_text(f"{memory}\n")
    (group / "memory.max").write_text(f"{256 * 2**20}\n")
    (group / "memory.stat").write_text("anon 10\nfile 4096\ninactive_file 1024\n")


def test_a_cgroup_v2_tree_is_read_and_a_gone_one_is_left_out(tmp_path: Path) -> None:
    _cgroup_v2(tmp_path, usage_usec=0, memory=50 * 2**20)
    meter = ContainerMeter(cgroup_root=tmp_path)
    probe = {"api-id": ContainerProbe(cgroup="hearth/sbx", disk=tmp_path, init_pid=None)}
    first = meter.read(probe, every=True)["api-id"]
    assert (first.cpu_count, first.cpu_used_pct) == (1, 0.0)  # no start known: idle
    assert first.mem_total == 256 * 2**20
    assert first.mem_used == 50 * 2**20 - 1024 and first.mem_cache == 4096
    disk = os.statvfs(tmp_path)
    assert first.disk_total == disk.f_blocks * disk.f_frsize
    _cgroup_v2(tmp_path, usage_usec=10**9, memory=60 * 2**20)  # a whole CPU second more
    second = meter.read(probe, every=True)["api-id"]
    assert second.cpu_used_pct == 100.0  # over a sliver of time: capped at all its vCPUs
    (tmp_path / "hearth" / "sbx" / "memory.current").unlink()  # it stopped meanwhile
    assert meter.read(probe, every=True) == {}
