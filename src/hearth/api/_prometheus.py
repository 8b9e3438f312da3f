"""A server's Prometheus series, in a registry of its own, served at `GET /metrics`.

What can be read when Prometheus scrapes is read then, so it cannot drift: sandboxes by
state and template (one store query a scrape), the warm pools (`node.pooled()`), builds
in progress, the host's CPUs and memory, and the plain tallies the gateways and the
builds keep. Only the creates are counted as they happen (the HTTP layer,
`hearth.api._telemetry`), with their latency. Nothing here runs on a request's path
but an increment.
"""

from __future__ import annotations

import collections
import hmac
import os
from collections.abc import Iterator
from typing import Protocol

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from hearth.proxy import Traffic
from hearth.store import SandboxState, Store

# A create takes tens of milliseconds from a warm pool, seconds when a template's first
# sandbox boots cold or waits for its build.
CREATE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CREATE_RESULTS = ("ok", "error", "429")
MIB = 1 << 20


class _Builds(Protocol):
    outcomes: collections.Counter[str]

    def in_progress(self) -> int: ...


class ServerMetrics:
    """The series of one server. `traffic` is what its gateways tally; `observe_create`
    is told of every create as it ends."""

    def __init__(self, store: Store, node: object, builds: _Builds, *, node_id: str) -> None:
        self.registry = CollectorRegistry()
        self.traffic = Traffic()
        self.creates = Counter(
            "hearth_sandbox_creates",
            "Sandbox creates (POST /sandboxes, /v2/sandboxes) by result: ok, error, 429",
            ["result"],
            registry=self.registry,
        )
        for result in CREATE_RESULTS:
            self.creates.labels(result)
        self.create_seconds = Histogram(
            "hearth_sandbox_create_duration_seconds",
            "Seconds a successful create took, from its request to its answer",
            buckets=CREATE_BUCKETS,
            registry=self.registry,
        )
        self._scraped = _Scraped(store, node, builds, self.traffic, node_id)
        self.registry.register(self._scraped)

    def observe_create(self, status: int, seconds: float) -> None:
        result = "ok" if status < 400 else "429" if status == 429 else "error"
        self.creates.labels(result).inc()
        if result == "ok":
            self.create_seconds.observe(seconds)

    async def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """Every series as of now, in the format the scraper's `Accept` asks for (the
        Prometheus text format by default, or OpenMetrics), and its content type."""
        await self._scraped.refresh()
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class _Scraped:
    """The series read at scrape time (a prometheus_client custom collector)."""

    def __init__(
        self, store: Store, node: object, builds: _Builds, traffic: Traffic, node_id: str
    ) -> None:
        self._store = store
        self._node = node
        self._builds = builds
        self._traffic = traffic
        self._node_id = node_id
        self._sandboxes: collections.Counter[tuple[str, str]] = (
            collections.Counter()
        )  # (state, template) -> count
        self._vcpus = 0  # of the running sandboxes
        self._memory_mb = 0

    async def refresh(self) -> None:
        """Read the store's sandboxes (collect() must not wait: it is synchronous)."""
        live = await self._store.running_on_node(self._node_id, include_paused=True)
        self._sandboxes = collections.Counter((s.state.value, s.template_id) for s in live)
        running = [s for s in live if s.state is SandboxState.RUNNING]
        self._vcpus = sum(s.cpu_count for s in running)
        self._memory_mb = sum(s.memory_mb for s in running)

    def collect(self) -> Iterator[Metric]:
        sandboxes = GaugeMetricFamily(
            "hearth_sandboxes",
            "Sandboxes on this node by state (running, paused) and template id",
            labels=["state", "template"],
        )
        for (state, template), count in sorted(self._sandboxes.items()):
            sandboxes.add_metric([state, template], count)
        yield sandboxes

        pooled = getattr(self._node, "pooled", None)
        pool = GaugeMetricFamily(
            "hearth_pool_sandboxes",
            "Sandboxes of the warm pool started and waiting for a create, by template id",
            labels=["template"],
        )
        for template, count in sorted((pooled() if pooled else {}).items()):
            pool.add_metric([template], count)
        yield pool

        builds = CounterMetricFamily(
            "hearth_template_builds",
            "Template builds finished by result: ready, error, cancelled",
            labels=["result"],
        )
        for result in ("ready", "error", "cancelled"):
            builds.add_metric([result], self._builds.outcomes[result])
        yield builds
        yield GaugeMetricFamily(
            "hearth_template_builds_in_progress",
            "Template builds waiting or building",
            value=self._builds.in_progress(),
        )

        yield from self._capacity()
        yield from self._proxy()

    def _capacity(self) -> Iterator[Metric]:
        """The host's CPUs and memory, and what the running sandboxes are given of them
        (the node does not reserve them: limits may add up to more than the host has)."""
        yield GaugeMetricFamily("hearth_node_vcpus", "CPUs of this host", value=os.cpu_count() or 0)
        yield GaugeMetricFamily(
            "hearth_node_vcpus_allocated",
            "vCPUs of the running sandboxes on this node",
            value=self._vcpus,
        )
        total, available = _meminfo()
        yield GaugeMetricFamily("hearth_node_memory_bytes", "Memory of this host", value=total)
        yield GaugeMetricFamily(
            "hearth_node_memory_available_bytes",
            "Memory of this host available to new work (MemAvailable)",
            value=available,
        )
        yield GaugeMetricFamily(
            "hearth_node_memory_allocated_bytes",
            "Memory limits of the running sandboxes on this node",
            value=self._memory_mb * MIB,
        )

    def _proxy(self) -> Iterator[Metric]:
        traffic = self._traffic
        yield CounterMetricFamily(
            "hearth_proxy_requests",
            "Requests the gateway relayed to sandboxes' ports",
            value=traffic.requests,
        )
        refusals = CounterMetricFamily(
            "hearth_proxy_refusals",
            "Requests the gateway answered itself (no such sandbox, port not open, ...)",
            labels=["status"],
        )
        for status, count in sorted(traffic.refusals.items()):
            refusals.add_metric([str(status)], count)
        yield refusals
        moved = CounterMetricFamily(
            "hearth_proxy_bytes",
            "Bytes the gateway relayed between clients and sandboxes, HTTP heads included",
            labels=["direction"],
        )
        moved.add_metric(["to_sandbox"], traffic.sandbox_bytes.written)
        moved.add_metric(["from_sandbox"], traffic.sandbox_bytes.read)
        yield moved


def _meminfo() -> tuple[int, int]:
    """MemTotal and MemAvailable of /proc/meminfo, in bytes (0 where unknown)."""
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    found[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found.get("MemTotal", 0), found.get("MemAvailable", 0)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The Prometheus exposition; with a metrics token, for `Authorization: Bearer` it."""
    token: str | None = request.app.state.settings.metrics_token
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return Response(
                "a bearer token is needed for /metrics\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    server: ServerMetrics = request.app.state.metrics
    body, content_type = await server.exposition(request.headers.get("accept", ""))
    return Response(body, headers={"Content-Type": content_type})
