"""`GET /metrics`: the server's Prometheus series, parsed as Prometheus parses them.

Against a container-runtime `hearth serve` with a warm pool of one `base` sandbox,
driven by the released `e2b` SDK: the series count what the server did (sandboxes by
state and template, creates by result, the latency histogram, the pool, sandbox
traffic through the gateway). Without a server: the optional bearer token, and how a
create's answer becomes its result.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hearth.api import ApiSettings, create_app

from .conftest import Hearth, served_containers

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: containers and network slots")


def scrape(url: str, **headers: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of /metrics: sample name -> sorted label pairs -> value."""
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def scraped_until(url: str, condition, what: str) -> dict:
    """Scrape until `condition(samples)` holds (bounded by tries, not by time)."""
    for _ in range(1200):  # a pool member starts in well under a second
        samples = scrape(url)
        if condition(samples):
            return samples
        time.sleep(0.1)
    raise AssertionError(f"/metrics never showed {what}: {samples}")


@pytest.fixture(scope="module")
def pooled() -> Iterator[Hearth]:
    with served_containers("hearth-prometheus-", pool_sizes={"base": 1}) as hearth:
        yield hearth


@root
@pytest.mark.root
def test_the_series_count_what_the_server_did(pooled: Hearth) -> None:
    from e2b import Sandbox

    url = pooled.api_url
    before = scraped_until(
        url, lambda s: value(s, "hearth_pool_sandboxes", template="base") == 1, "a pool of 1"
    )
    assert value(before, "hearth_sandbox_creates_total", result="ok") == 0
    assert value(before, "hearth_sandboxes", state="running", template="base") == 0
    assert value(before, "hearth_node_vcpus") == os.cpu_count()
    assert value(before, "hearth_node_memory_bytes") > 0
    assert value(before, "hearth_node_vcpus_allocated") == 0

    first = Sandbox.create("base", timeout=120)
    second = Sandbox.create("base", timeout=120)
    try:
        assert first.commands.run("echo hello").stdout == "hello\n"
        with pytest.raises(Exception):  # noqa: B017 - the SDK's NotFound, whatever its class
            Sandbox.create("no-such-template", timeout=120)

        after = scrape(url)
        assert value(after, "hearth_sandboxes", state="running", template="base") == 2
        assert value(after, "hearth_sandbox_creates_total", result="ok") == 2
        assert value(after, "hearth_sandbox_creates_total", result="error") == 1
        assert value(after, "hearth_sandbox_creates_total", result="429") == 0
        assert value(after, "hearth_sandbox_create_duration_seconds_count") == 2
        assert value(after, "hearth_sandbox_create_duration_seconds_bucket", le="+Inf") == 2
        assert value(after, "hearth_sandbox_create_duration_seconds_sum") > 0
        assert value(after, "hearth_node_vcpus_allocated") == 2 * first.get_info().cpu_count
        assert value(after, "hearth_node_memory_allocated_bytes") == (
            2 * first.get_info().memory_mb * (1 << 20)
        )
        # The command and its output went through the gateway.
        assert value(after, "hearth_proxy_requests_total") >= 1
        assert value(after, "hearth_proxy_bytes_total", direction="to_sandbox") > 0
        assert value(after, "hearth_proxy_bytes_total", direction="from_sandbox") > 0
        # The built-in templates' builds: base's at least (the code interpreter's may
        # still be building).
        assert (
            value(after, "hearth_template_builds_total", result="ready")
            + value(after, "hearth_template_builds_in_progress")
            >= 1
        )

        assert second.pause() is True
        paused = scrape(url)
        assert value(paused, "hearth_sandboxes", state="running", template="base") == 1
        assert value(paused, "hearth_sandboxes", state="paused", template="base") == 1
        # The claimed member was replaced.
        scraped_until(
            url, lambda s: value(s, "hearth_pool_sandboxes", template="base") == 1, "a refill"
        )
        # A request for a sandbox that is gone is the gateway's own 502.
        first.kill()
        missing = httpx.get(
            f"{pooled.sandbox_url}/health",
            headers={"E2b-Sandbox-Id": first.sandbox_id, "E2b-Sandbox-Port": "49983"},
            timeout=30,
        )
        assert missing.status_code == 502
        killed = scrape(url)
        assert value(killed, "hearth_sandboxes", state="running", template="base") == 0
        assert value(killed, "hearth_proxy_refusals_total", status="502") >= 1
    finally:
        for sandbox in (first, second):
            sandbox.kill()


@pytest.fixture
async def bare_app(tmp_path: Path):
    """The API app over an empty store and a node that runs nothing, served in-process
    (no lifespan: /metrics needs none)."""
    from hearth import store

    opened = await store.open(f"sqlite+aiosqlite:///{tmp_path}/hearth.db")
    try:
        yield lambda settings: create_app(opened, _IdleNode(), settings)  # type: ignore[arg-type]
    finally:
        await opened.close()


class _IdleNode:
    def pooled(self) -> dict[str, int]:
        return {"base": 3}


async def test_metrics_ask_for_the_token_when_one_is_set(bare_app) -> None:
    app = bare_app(ApiSettings(metrics_token="s3cret"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hearth") as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        allowed = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert allowed.status_code == 200
        names = {f.name for f in text_string_to_metric_families(allowed.text)}
        assert {"hearth_sandboxes", "hearth_pool_sandboxes", "hearth_sandbox_creates"} <= names
        assert 'hearth_pool_sandboxes{template="base"} 3.0' in allowed.text
        # Not E2B's API: no part of its description.
        assert "/metrics" not in (await client.get("/openapi.json")).json()["paths"]


async def test_metrics_are_open_without_a_token(bare_app) -> None:
    app = bare_app(ApiSettings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hearth") as client:
        assert (await client.get("/metrics")).status_code == 200


def test_a_creates_answer_is_its_result() -> None:
    from hearth.api._prometheus import ServerMetrics

    class Builds:
        outcomes: collections.Counter = collections.Counter()

        def in_progress(self) -> int:
            return 0

    metrics = ServerMetrics(None, None, Builds(), node_id="local")  # type: ignore[arg-type]
    for status in (201, 201, 429, 400, 500):
        metrics.observe_create(status, 0.05)
    assert metrics.registry.get_sample_value("hearth_sandbox_creates_total", {"result": "ok"}) == 2
    assert metrics.registry.get_sample_value("hearth_sandbox_creates_total", {"result": "429"}) == 1
    assert (
        metrics.registry.get_sample_value("hearth_sandbox_creates_total", {"result": "error"}) == 2
    )
    assert metrics.registry.get_sample_value("hearth_sandbox_create_duration_seconds_count") == 2
    assert (
        metrics.registry.get_sample_value(
            "hearth_sandbox_create_duration_seconds_bucket", {"le": "0.05"}
        )
        == 2
    )
