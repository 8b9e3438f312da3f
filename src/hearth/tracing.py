"""Traces of a server's work, exported over OTLP/HTTP when an endpoint is configured.

The tracer is the server's, not the process's: one process may run several servers
(tests, embedders), each exporting where it was told or not at all, so it is held in a
context variable that `exporting` sets in `serve()` before the server starts its tasks,
which inherit it. Work that runs in a context of its own (the warm pool's refills) and
any server without an endpoint get the API's no-op tracer, and `span()` is then a shared
do-nothing context manager: no SDK is imported, nothing is allocated per span.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

SERVICE_NAME = "hearth"
_NO_OP: Tracer = trace.NoOpTracer()
_NO_SPAN = contextlib.nullcontext(INVALID_SPAN)
_tracer: ContextVar[Tracer] = ContextVar("hearth_tracer", default=_NO_OP)

Attributes = Mapping[str, AttributeValue]


def enabled() -> bool:
    """Whether spans started here are recorded and exported."""
    return _tracer.get() is not _NO_OP


def tracer() -> Tracer:
    """This server's tracer (the no-op one where nothing is exported)."""
    return _tracer.get()


def span(
    name: str, attributes: Attributes | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> contextlib.AbstractContextManager[Span]:
    """A span that is the current one for its block: `with span("node.create", {...}):`."""
    current = _tracer.get()
    if current is _NO_OP:
        return _NO_SPAN
    return current.start_as_current_span(name, attributes=attributes, kind=kind)


def child_span(
    name: str, attributes: Attributes | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> contextlib.AbstractContextManager[Span]:
    """`span()` inside a traced operation only: a step that also runs on its own (envd's
    /init in a build sandbox) would otherwise make a trace of one span each time."""
    if not trace.get_current_span().is_recording():
        return _NO_SPAN
    return span(name, attributes, kind=kind)


def current_span() -> Span:
    """The span of the operation running now (a non-recording one if none is)."""
    return trace.get_current_span()


@contextlib.asynccontextmanager
async def exporting(
    endpoint: str | None, *, service_name: str = SERVICE_NAME
) -> AsyncIterator[TracerProvider | None]:
    """Export the spans of the tasks started in the block to `endpoint` (the full URL of
    an OTLP/HTTP collector's traces, `http://host:4318/v1/traces`), batched; the spans
    still pending are sent when it ends. None: nothing is exported and no SDK is loaded.
    The exporter takes its other settings (headers, TLS, compression, timeout) and the
    batch processor its schedule from the standard OTEL_* variables."""
    if not endpoint:
        yield None
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    token = _tracer.set(provider.get_tracer("hearth"))
    log.info("exporting traces to %s", endpoint)
    try:
        yield provider
    finally:
        _tracer.reset(token)
        # Flushes what is pending; blocking (an unreachable collector takes its timeout).
        await asyncio.to_thread(provider.shutdown)
