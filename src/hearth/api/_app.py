"""The FastAPI application: routes, error mapping, and the sandbox reaper's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from hearth.api import _errors
from hearth.api._live import LiveSandboxes
from hearth.api._sandboxes import Sandboxes
from hearth.api._settings import ApiSettings
from hearth.api.routes import health, sandboxes, templates
from hearth.node.interface import Node
from hearth.store import Store


def create_app(store: Store, node: Node, settings: ApiSettings | None = None) -> FastAPI:
    """The E2B control-plane API over `store` and `node`.

    On start it reconciles the store with what the node runs and starts the reaper,
    which kills (or, with autoPause, pauses) sandboxes at their end; `live_sandboxes(app)`
    is what the proxy routes by.
    """
    settings = settings or ApiSettings()
    live = LiveSandboxes(node)
    service = Sandboxes(store, node, settings, live)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.reconcile()
        reaper = asyncio.create_task(service.reap_forever(), name="hearth-reaper")
        try:
            yield
        finally:
            reaper.cancel()
            await asyncio.gather(reaper, return_exceptions=True)
            await service.aclose()

    app = FastAPI(title="Hearth", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store = store
    app.state.node = node
    app.state.settings = settings
    app.state.sandboxes = service
    app.state.live = live
    _errors.install(app)
    for module in (health, sandboxes, templates):
        app.include_router(module.router)
    return app


def live_sandboxes(app: FastAPI) -> LiveSandboxes:
    """The running sandboxes of `app`, for the proxy (`hearth.proxy.SandboxDirectory`)."""
    return app.state.live
