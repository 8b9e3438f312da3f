"""OpenTelemetry traces of a create, received by a collector the test runs.

A container-runtime `hearth serve` exports to a tiny OTLP/HTTP collector on loopback
(POST /v1/traces, protobuf); one `Sandbox.create()` of the released `e2b` SDK is then
one trace: the API's request, the node's create, the runtime's start and envd's /init,
each the parent of the next, with the sandbox's, template's and team's ids and whether
a pooled sandbox was claimed, and no secret among the attributes. With no endpoint
configured, no exporter is made at all.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .conftest import served_containers

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: containers and network slots"),
]

CREATE_TREE = ("POST /v2/sandboxes", "node.create", "runtime.start", "envd.init")


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    kind: int
    attributes: dict[str, object]
    service: str


class Collector:
    """An OTLP/HTTP trace receiver on loopback; `spans` is what it got, in order."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                assert self.headers["Content-Type"] == "application/x-protobuf"
                collector._received(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _received(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Span(
                                name=span.name,
                                trace_id=span.trace_id,
                                span_id=span.span_id,
                                parent_id=span.parent_span_id,
                                kind=span.kind,
                                attributes=_attributes(span.attributes),
                                service=str(resource.get("service.name")),
                            )
                        )

    def trace_of(self, sandbox_id: str) -> list[Span]:
        """The spans of the trace whose API span created `sandbox_id`, once all of the
        create's have come (bounded by tries: the batch is sent every 50 ms)."""
        for _ in range(600):
            with self._lock:
                spans = list(self.spans)
            roots = [
                s
                for s in spans
                if s.name == CREATE_TREE[0] and s.attributes.get("sandbox.id") == sandbox_id
            ]
            if roots:
                trace = [s for s in spans if s.trace_id == roots[0].trace_id]
                if {s.name for s in trace} >= set(CREATE_TREE):
                    return trace
            time.sleep(0.1)
        raise AssertionError(f"no full trace of the create of {sandbox_id}: {spans}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _attributes(pairs) -> dict[str, object]:
    found: dict[str, object] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        found[pair.key] = getattr(pair.value, kind) if kind else None
    return found


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    # The standard variable of the batch processor: spans leave within 50 ms.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    received = Collector()
    try:
        yield received
    finally:
        received.close()


def _one(trace: list[Span], name: str) -> Span:
    found = [s for s in trace if s.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name} in {trace}"
    return found[0]


def _assert_create_tree(trace: list[Span], sandbox_id: str, *, pooled: bool) -> None:
    api, node, runtime, init = (_one(trace, name) for name in CREATE_TREE)
    assert api.parent_id == b""  # the SDK sends no traceparent: the request starts it
    assert api.kind == 2  # SPAN_KIND_SERVER
    assert node.parent_id == api.span_id
    assert runtime.parent_id == node.span_id
    assert init.parent_id == runtime.span_id
    assert init.kind == 3  # SPAN_KIND_CLIENT
    assert {s.service for s in trace} == {"hearth"}
    assert api.attributes["http.route"] == "/v2/sandboxes"
    assert api.attributes["http.response.status_code"] == 201
    for span in (api, node, runtime):
        assert span.attributes["sandbox.id"] == sandbox_id
        assert span.attributes["template.id"] == "base"
    assert isinstance(api.attributes["team.id"], str) and api.attributes["team.id"]
    assert node.attributes["pooled"] is pooled
    assert runtime.attributes["pooled"] is pooled
    assert runtime.attributes["runtime"] == "container"


def _assert_no_secret(trace: list[Span], *secrets: str | None) -> None:
    for span in trace:
        for key, value in span.attributes.items():
            for secret in filter(None, secrets):
                assert secret not in str(value), f"{span.name}: {key} holds a secret"


def test_a_create_is_one_trace_from_the_api_to_envd(collector: Collector) -> None:
    from e2b import Sandbox

    with served_containers("hearth-tracing-", otlp_endpoint=collector.endpoint) as hearth:
        sandbox = Sandbox.create("base", timeout=120)
        try:
            trace = collector.trace_of(sandbox.sandbox_id)
            _assert_create_tree(trace, sandbox.sandbox_id, pooled=False)
            _assert_no_secret(
                trace, hearth.api_key, sandbox._envd_access_token, sandbox.traffic_access_token
            )
        finally:
            sandbox.kill()


def test_a_pooled_create_is_traced_through_its_claim(collector: Collector) -> None:
    from e2b import Sandbox

    with served_containers(
        "hearth-tracing-pool-", otlp_endpoint=collector.endpoint, pool_sizes={"base": 1}
    ):
        _filled()
        sandbox = Sandbox.create("base", timeout=120)
        try:
            trace = collector.trace_of(sandbox.sandbox_id)
            _assert_create_tree(trace, sandbox.sandbox_id, pooled=True)
        finally:
            sandbox.kill()
    # The pool's own starts (no request behind them) make no traces: every trace is a
    # request's.
    roots = [s for s in collector.spans if s.parent_id == b""]
    assert roots and all(s.kind == 2 for s in roots), roots


def _filled() -> None:
    """Until the pool holds its member (the node's own count, through /metrics)."""
    import httpx

    url = os.environ["E2B_API_URL"]
    for _ in range(1200):
        if 'hearth_pool_sandboxes{template="base"} 1.0' in httpx.get(f"{url}/metrics").text:
            return
        time.sleep(0.1)
    raise AssertionError("the pool was never filled")


def test_without_an_endpoint_nothing_is_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    from e2b import Sandbox
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    for name in list(os.environ):
        if name.startswith("OTEL_EXPORTER_OTLP"):
            monkeypatch.delenv(name)
    made: list[object] = []
    original = trace_exporter.OTLPSpanExporter.__init__

    def spy(self, *args, **kwargs) -> None:
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(trace_exporter.OTLPSpanExporter, "__init__", spy)
    with served_containers("hearth-untraced-"):
        sandbox = Sandbox.create("base", timeout=120)
        sandbox.kill()
    assert made == []
    assert not [t for t in threading.enumerate() if t.name.startswith("OtelBatch")]
