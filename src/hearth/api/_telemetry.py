"""The API's requests as telemetry sees them: a server span for each when traces are
exported, and the creates' results and latency for `/metrics`.

An ASGI middleware outside the app's others, so a span covers the whole request and its
status is the one the client got. With no exporter, a request that is no create passes
straight through.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from hearth import tracing

# The routes that create a sandbox (v1, v2).
CREATE_PATHS = frozenset({"/sandboxes", "/v2/sandboxes"})

Observe = Callable[[int, float], None]  # (status, seconds) of a create


class InstrumentedRequests:
    """Traces every request while traces are exported; reports each create to
    `observe_create`."""

    def __init__(self, app: Any, *, observe_create: Observe) -> None:
        self.app = app
        self._observe_create = observe_create

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        create = scope["method"] == "POST" and scope["path"] in CREATE_PATHS
        traced = tracing.enabled()
        if not create and not traced:
            await self.app(scope, receive, send)
            return
        status = 500  # unless the app answers

        async def answer(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.monotonic()
        try:
            if traced:
                await self._traced(scope, receive, answer, lambda: status)
            else:
                await self.app(scope, receive, answer)
        finally:
            if create:
                self._observe_create(status, time.monotonic() - started)

    async def _traced(self, scope: Any, receive: Any, send: Any, status: Callable[[], int]) -> None:
        method = scope["method"]
        # A caller's own trace (a `traceparent` header) is continued.
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        attributes = {"http.request.method": method, "url.path": scope["path"]}
        with tracing.tracer().start_as_current_span(
            method,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=True,
        ) as span:
            try:
                await self.app(scope, receive, send)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status())
                if status() >= 500:
                    span.set_status(Status(StatusCode.ERROR))
