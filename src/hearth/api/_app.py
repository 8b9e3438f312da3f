"""The FastAPI application: routes, error mapping, the dashboard, and the lifetimes of the
sandbox reaper, the metrics sampler and the template builds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI

from hearth.api import _errors, _openapi
from hearth.api._builds import TemplateBuilds
from hearth.api._limits import BoundedRequests
from hearth.api._live import LiveSandboxes
from hearth.api._names import ENCODED_SLASH
from hearth.api._prometheus import ServerMetrics
from hearth.api._prometheus import router as metrics_router
from hearth.api._sampler import MetricsSampler
from hearth.api._sandboxes import Sandboxes
from hearth.api._settings import ApiSettings
from hearth.api._snapshots import Snapshots
from hearth.api._telemetry import InstrumentedRequests
from hearth.api._templates import Templates
from hearth.api._uploads import UPLOAD_PATH
from hearth.api.routes import access, health, sandboxes, snapshots, team_metrics, templates
from hearth.dashboard import mount as mount_dashboard
from hearth.node.interface import Node
from hearth.store import Store


def create_app(
    store: Store,
    node: Node,
    settings: ApiSettings | None = None,
    *,
    builds: TemplateBuilds | None = None,
) -> FastAPI:
    """The E2B control-plane API over `store` and `node`.

    On start it reconciles the store with what the node runs and starts the reaper,
    which kills (or, with autoPause, pauses) sandboxes at their end, and the metrics
    sampler, which keeps what running sandboxes use in the store; `live_sandboxes(app)`
    is what the proxy routes by. Template builds run in `builds` (whoever passes it
    starts and closes it, as `hearth serve` does to build the built-ins before the API
    listens), else in the app's own, closed when the app stops.
    """
    settings = settings or ApiSettings()
    live = LiveSandboxes(node)
    own_builds = builds is None
    if builds is None:
        builds = TemplateBuilds(store, node, concurrency=settings.build_concurrency)
    sampler = MetricsSampler(
        store, node, interval=settings.metrics_interval, retention=settings.metrics_retention
    )
    service = Sandboxes(store, node, settings, live, builds, sampler=sampler)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if own_builds:
            await builds.fail_unfinished()
        await service.reconcile()
        reaper = asyncio.create_task(service.reap_forever(), name="hearth-reaper")
        sampling = asyncio.create_task(sampler.run_forever(), name="hearth-metrics-sampler")
        try:
            yield
        finally:
            for task in (reaper, sampling):
                task.cancel()
            await asyncio.gather(reaper, sampling, return_exceptions=True)
            if own_builds:
                await builds.close()
            await service.aclose()

    app = _routed(lifespan)
    app.state.store = store
    app.state.node = node
    app.state.settings = settings
    app.state.sandboxes = service
    app.state.templates = Templates(store, node, settings, builds)
    app.state.snapshots = Snapshots(store, settings, service)
    app.state.live = live
    # Prometheus's, not E2B's: out of the OpenAPI description (`serve` hands the
    # gateways `metrics.traffic`).
    app.state.metrics = metrics = ServerMetrics(store, node, builds, node_id=settings.node_id)
    app.include_router(metrics_router)
    mount_dashboard(app)
    app.add_middleware(BoundedRequests, streamed=UPLOAD_PATH)
    app.add_middleware(_KeepEncodedSlashes)
    app.add_middleware(InstrumentedRequests, observe_create=metrics.observe_create)
    return app


def openapi_description() -> dict[str, Any]:
    """The OpenAPI description `/openapi.json` serves, without a server to ask."""
    return _routed(None).openapi()


def _routed(lifespan: Any) -> FastAPI:
    """The app's routes, error answers and description, before any state."""
    app = FastAPI(
        title="Hearth",
        description="A self-hosted server of E2B's control-plane API.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    _errors.install(app)
    for module in (access, health, sandboxes, snapshots, team_metrics, templates):
        app.include_router(module.router)
    _openapi.install(app)
    return app


class _KeepEncodedSlashes:
    """Keep a `%2F` in a path segment (the SDK's encoding of a namespaced template name,
    spec §2.1) from splitting the segment when Starlette routes by the decoded path:
    the segment reaches the route with `%2F` in it, which `parse_name` reads as `/`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and b"%2f" in raw.lower():
            segments = raw.decode("latin-1").split("/")
            path = "/".join(unquote(s).replace("/", ENCODED_SLASH) for s in segments)
            scope = {**scope, "path": path}
        await self.app(scope, receive, send)


def live_sandboxes(app: FastAPI) -> LiveSandboxes:
    """The running sandboxes of `app`, for the proxy (`hearth.proxy.SandboxDirectory`)."""
    return app.state.live
