"""Sandbox and team metrics through the released `e2b` SDKs (Python and npm), the E2B
CLI and the REST routes, against a real `hearth serve --runtime container`: samples are
the sandbox's own (its vCPUs, its memory limit, its disk), kept in the store every few
seconds, served for a time range, kept while it is paused and after it is killed (for
the retention); and each team sees its own only."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from e2b import Sandbox, SandboxMetrics
from e2b.exceptions import NotFoundException, SandboxException

from .conftest import Hearth, run_e2b_cli, run_npm_script, served_containers, team_key

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: containers and network slots"),
]

MIB = 2**20
# Samples are taken every few seconds (api/_sampler.py): how long a test waits for the
# next ones. It bounds a wait, it asserts no speed.
PATIENCE = 60.0
MAX_TIME = "2299-12-31 23:59:59.999999999 +0000 UTC"  # infra's last time
JS_METRICS = Path(__file__).with_name("metrics.mjs")

T = TypeVar("T")


@pytest.fixture(scope="module")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-metrics-") as info:
        yield info


@pytest.fixture(scope="module")
def api(hearth: Hearth) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hearth.api_url, headers={"X-API-Key": hearth.api_key}) as client:
        yield client


@pytest.fixture(scope="module")
def other(hearth: Hearth) -> Iterator[httpx.Client]:
    """The API as a key of another team sees it."""
    key = team_key(hearth, "metrics-other")
    with httpx.Client(base_url=hearth.api_url, headers={"X-API-Key": key}) as client:
        yield client


@pytest.fixture
def sandbox(hearth: Hearth) -> Iterator[Sandbox]:
    sbx = Sandbox.create("base", timeout=300)
    try:
        yield sbx
    finally:
        sbx.kill()


def _until(probe: Callable[[], T | None], what: str) -> T:
    """`probe()`'s first answer that is not None, asked again until PATIENCE is over."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {PATIENCE} s")


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == status
    return body["message"]


def _disk_mb(sandbox: Sandbox) -> int:
    """The sandbox's diskSizeMB, as the API's detail gives it (the SDK's info does not)."""
    detail = httpx.get(
        f"{os.environ['E2B_API_URL']}/sandboxes/{sandbox.sandbox_id}",
        headers={"X-API-Key": os.environ["E2B_API_KEY"]},
    )
    return detail.json()["diskSizeMB"]


def _own_limits(sandbox: Sandbox, metric: SandboxMetrics) -> None:
    """`metric` is of the sandbox's own vCPUs, memory and disk, not the host's."""
    info = sandbox.get_info()
    disk_mb = _disk_mb(sandbox)
    assert metric.cpu_count == min(info.cpu_count, len(os.sched_getaffinity(0)))
    assert metric.mem_total == info.memory_mb * MIB
    assert 0 < metric.mem_used < metric.mem_total
    assert 0 <= metric.mem_cache <= metric.mem_total
    # The disk is the sandbox's own file system of diskSizeMB (ext4 keeps some of it).
    df = sandbox.commands.run("df -B1 --output=size,used /").stdout.splitlines()[-1].split()
    assert metric.disk_total == int(df[0])
    assert disk_mb * MIB * 0.85 < metric.disk_total <= disk_mb * MIB
    assert 0 < metric.disk_used <= metric.disk_total
    assert 0 <= metric.cpu_used_pct <= 100


def test_sdk_metrics_are_the_sandboxs_own_and_kept_over_time(sandbox: Sandbox) -> None:
    first = sandbox.get_metrics()
    assert first, "a sandbox has a sample as soon as it runs"
    _own_limits(sandbox, first[-1])
    # The sampler adds one every few seconds; each read gives them all, oldest first.
    kept = _until(lambda: m if len(m := sandbox.get_metrics()) >= 3 else None, "three samples")
    stamps = [m.timestamp for m in kept]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    for metric in kept:
        _own_limits(sandbox, metric)
    assert Sandbox.get_metrics(sandbox.sandbox_id)[: len(kept)] == kept  # the static call


def test_start_and_end_choose_the_samples(sandbox: Sandbox) -> None:
    kept = _until(lambda: m if len(m := sandbox.get_metrics()) >= 3 else None, "three samples")
    middle = kept[1].timestamp
    since = sandbox.get_metrics(start=middle)
    assert since and all(m.timestamp >= middle - timedelta(seconds=1) for m in since)
    assert kept[0].timestamp not in [m.timestamp for m in since]
    until = sandbox.get_metrics(end=middle + timedelta(seconds=1))
    assert until[0] == kept[0] and all(m.timestamp <= middle + timedelta(seconds=1) for m in until)
    before = datetime.now(UTC) - timedelta(days=3)
    assert sandbox.get_metrics(start=before, end=before + timedelta(hours=1)) == []
    with pytest.raises(SandboxException, match="start time cannot be after end time"):
        sandbox.get_metrics(start=middle, end=middle - timedelta(seconds=10))


def test_a_memory_hog_raises_mem_used(sandbox: Sandbox) -> None:
    baseline = sandbox.get_metrics()[-1].mem_used
    hog = sandbox.commands.run(
        "python3 -c 'import time; b = bytearray(256 * 2**20);"
        " [b.__setitem__(i, 1) for i in range(0, len(b), 4096)]; time.sleep(600)'",
        background=True,
    )
    try:
        grown = _until(
            lambda: m if (m := sandbox.get_metrics()[-1]).mem_used > baseline + 200 * MIB else None,
            "sample with the hog's memory",
        )
        assert grown.mem_used < grown.mem_total
    finally:
        hog.kill()


def test_paused_and_killed_sandboxes_keep_their_history(
    hearth: Hearth, api: httpx.Client, other: httpx.Client
) -> None:
    """As infra keeps a sandbox's metrics in its store after it ends (E2B's CLI prints
    them, then "sandbox is closed"); an id that was never the team's is not found."""
    sbx = Sandbox.create("base", timeout=300)
    sandbox_id = sbx.sandbox_id
    try:
        kept = _until(lambda: m if len(m := sbx.get_metrics()) >= 2 else None, "two samples")
        sbx.pause()
        paused = Sandbox.get_metrics(sandbox_id)
        assert paused[: len(kept)] == kept
        time.sleep(6)  # a sampling round: a paused sandbox is not sampled
        assert len(Sandbox.get_metrics(sandbox_id)) == len(paused)
    finally:
        Sandbox.kill(sandbox_id)
    assert Sandbox.get_metrics(sandbox_id) == paused
    latest = api.get("/sandboxes/metrics", params={"sandbox_ids": sandbox_id}).json()
    assert latest["sandboxes"][sandbox_id]["timestampUnix"] == int(paused[-1].timestamp.timestamp())
    # Another team is told nothing of it, as of an id that never was.
    message = _error(other.get(f"/sandboxes/{sandbox_id}/metrics"), 404)
    assert message == f"Sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it"
    with pytest.raises(NotFoundException):
        Sandbox.get_metrics("c0000000000000000000")
    assert other.get("/sandboxes/metrics", params={"sandbox_ids": sandbox_id}).json() == {
        "sandboxes": {}
    }


def test_rest_metrics_validate_their_range_and_hide_other_teams(
    sandbox: Sandbox, api: httpx.Client, other: httpx.Client
) -> None:
    path = f"/sandboxes/{sandbox.sandbox_id}/metrics"
    (metric,) = api.get(path, params={"start": int(time.time()) - 60}).json()[-1:]
    assert set(metric) == {
        "timestamp",
        "timestampUnix",
        "cpuCount",
        "cpuUsedPct",
        "memUsed",
        "memTotal",
        "memCache",
        "diskUsed",
        "diskTotal",
    }
    assert datetime.fromisoformat(metric["timestamp"]).timestamp() // 1 == metric["timestampUnix"]
    for bad in ("soon", "-1", "1.5", str(2**63)):
        _error(api.get(path, params={"start": bad}), 400)
    assert _error(api.get(path, params={"start": 10**11}), 400) == (
        f"Error when validating metrics time range: start time cannot be after {MAX_TIME}"
    )
    assert _error(api.get(path, params={"end": 10**11}), 400).endswith(
        f"end time cannot be after {MAX_TIME}"
    )
    assert _error(api.get(path, params={"start": 200, "end": 100}), 400).endswith(
        "start time cannot be after end time"
    )
    assert api.get(path, params={"start": 0, "end": 1}).json() == []
    # Another team's sandbox is not found, as an unknown one is.
    hidden = _error(other.get(path), 404)
    assert hidden == _error(api.get("/sandboxes/a0000000000000000000/metrics"), 404).replace(
        "a0000000000000000000", sandbox.sandbox_id
    )


def test_latest_metrics_of_several_sandboxes(hearth: Hearth, api, other) -> None:
    first, second = Sandbox.create("base", timeout=300), Sandbox.create("base", timeout=300)
    try:
        ids = [first.sandbox_id, second.sandbox_id]
        for sbx in (first, second):
            _until(lambda s=sbx: s.get_metrics() or None, "a sample")
        repeated = api.get("/sandboxes/metrics", params={"sandbox_ids": ids})
        assert repeated.status_code == 200, repeated.text
        latest = repeated.json()["sandboxes"]
        assert set(latest) == set(ids)
        for sandbox_id, metric in latest.items():
            newest = Sandbox.get_metrics(sandbox_id)[-1]
            assert metric["timestampUnix"] <= int(newest.timestamp.timestamp())
            assert metric["memTotal"] == 512 * MIB and metric["cpuCount"] >= 1
        # The SDK's generated client sends them comma-separated (explode: false).
        unknown = "b0000000000000000000"
        joined = api.get("/sandboxes/metrics", params={"sandbox_ids": ",".join([*ids, unknown])})
        assert set(joined.json()["sandboxes"]) == set(ids)
        # Another team asking for them learns nothing.
        theirs = other.get("/sandboxes/metrics", params={"sandbox_ids": ",".join(ids)})
        assert theirs.status_code == 200 and theirs.json() == {"sandboxes": {}}
        too_many = ",".join(f"{n:020d}" for n in range(101))
        assert _error(api.get("/sandboxes/metrics", params={"sandbox_ids": too_many}), 400) == (
            "Too many sandboxes requested, maximum is 100"
        )
        assert "sandbox_ids" in _error(api.get("/sandboxes/metrics"), 400)
    finally:
        first.kill()
        second.kill()


def _team_id(client: httpx.Client) -> str:
    (team,) = client.get("/teams").json()
    return team["teamID"]


def test_team_metrics_count_running_sandboxes_and_starts(
    hearth: Hearth, api: httpx.Client, other: httpx.Client
) -> None:
    team_id = _team_id(api)
    began = int(time.time()) - 1
    first, second = Sandbox.create("base", timeout=300), Sandbox.create("base", timeout=300)
    try:
        points = api.get(f"/teams/{team_id}/metrics").json()
        assert points and all(
            set(p) == {"timestamp", "timestampUnix", "concurrentSandboxes", "sandboxStartRate"}
            for p in points
        )
        assert max(p["concurrentSandboxes"] for p in points) >= 2
        assert any(p["sandboxStartRate"] > 0 for p in points)
        end = int(time.time()) + 30
        ranged = api.get(f"/teams/{team_id}/metrics", params={"start": began, "end": end})
        assert ranged.status_code == 200 and ranged.json()
        assert all(began <= p["timestampUnix"] <= end for p in ranged.json())

        most = api.get(
            f"/teams/{team_id}/metrics/max", params={"metric": "concurrent_sandboxes"}
        ).json()
        assert set(most) == {"timestamp", "timestampUnix", "value"} and most["value"] >= 2
        rate = api.get(
            f"/teams/{team_id}/metrics/max",
            params={"metric": "sandbox_start_rate", "start": began},
        ).json()
        assert rate["value"] > 0 and rate["timestampUnix"] >= began
    finally:
        first.kill()
        second.kill()
    # Once they are killed (and the module's others with them), a later range has none.
    after = int(time.time()) + 1
    quiet = api.get(
        f"/teams/{team_id}/metrics/max",
        params={"metric": "concurrent_sandboxes", "start": after, "end": after + 60},
    ).json()
    assert quiet["value"] == 0


def test_team_metrics_refuse_bad_input_and_other_teams(
    api: httpx.Client, other: httpx.Client
) -> None:
    team_id, other_id = _team_id(api), _team_id(other)
    assert other.get(f"/teams/{other_id}/metrics").json() == []  # a team that ran nothing
    for metric in ("concurrent_sandboxes", "sandbox_start_rate"):
        empty = other.get(f"/teams/{other_id}/metrics/max", params={"metric": metric}).json()
        assert empty["value"] == 0
    for path, params in (
        (f"/teams/{team_id}/metrics", {}),
        (f"/teams/{team_id}/metrics/max", {"metric": "concurrent_sandboxes"}),
    ):
        message = _error(other.get(path, params=params), 403)
        assert message == (
            f"You ({other_id}) are not authorized to access this team's ({team_id}) metrics"
        )
        assert _error(api.get(path, params={**params, "end": 10**11}), 400) == (
            f"end time cannot be after {MAX_TIME}"
        )
        assert _error(api.get(path, params={**params, "start": 5, "end": 4}), 400) == (
            "start time cannot be after end time"
        )
        _error(api.get(path, params={**params, "start": "yesterday"}), 400)
    assert "metric" in _error(api.get(f"/teams/{team_id}/metrics/max"), 400)
    bad = api.get(f"/teams/{team_id}/metrics/max", params={"metric": "cpu"})
    assert "metric" in _error(bad, 400)


def test_e2b_cli_prints_a_sandboxs_metrics(hearth: Hearth, e2b_cli, sandbox: Sandbox) -> None:
    _until(lambda: sandbox.get_metrics() or None, "a sample")
    out = run_e2b_cli(e2b_cli, hearth, "sandbox", "metrics", sandbox.sandbox_id)
    assert f"Metrics for sandbox {sandbox.sandbox_id}" in out
    lines = [line for line in out.splitlines() if "CPU:" in line]
    assert lines, out
    info = sandbox.get_info()
    for line in lines:
        # `[2026-01-01 12:00:00Z] CPU:  1.2% /  2 Cores | Memory:  30 / 512  MiB | Disk: ...`
        assert f"/ {info.memory_mb}" in line.split("Memory:")[1].split("|")[0], line
        assert "Disk:" in line
    assert "Stopped printing metrics" not in out  # it runs
    printed = run_e2b_cli(
        e2b_cli, hearth, "sandbox", "metrics", sandbox.sandbox_id, "--format", "json"
    )
    rows = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    assert rows and all(r["memTotal"] == info.memory_mb * MIB for r in rows)
    assert all(r["cpuCount"] == min(info.cpu_count, len(os.sched_getaffinity(0))) for r in rows)


def test_the_npm_sdk_reads_the_same_metrics(hearth: Hearth) -> None:
    printed = run_npm_script(JS_METRICS, hearth.env(), timeout=300)
    results = {name: values[-1] for name, values in printed.items()}
    assert results["memTotal"] == 512 * MIB
    assert results["cpuCount"] == min(2, len(os.sched_getaffinity(0)))
    assert results["ranges"] is True
    assert results["keptAfterKill"] is True
    assert results["unknown"] == "SandboxNotFoundError"


def test_e2b_cli_prints_a_killed_sandboxs_history_and_says_it_is_closed(
    hearth: Hearth, e2b_cli
) -> None:
    sbx = Sandbox.create("base", timeout=300)
    try:
        _until(lambda: sbx.get_metrics() or None, "a sample")
    finally:
        sbx.kill()
    out = run_e2b_cli(e2b_cli, hearth, "sandbox", "metrics", sbx.sandbox_id)
    assert any("CPU:" in line and "Memory:" in line for line in out.splitlines()), out
    assert "Stopped printing metrics — sandbox is closed" in out
