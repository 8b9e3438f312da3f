"""The routes of spec §4.1 over the contexts: health, execute, and context management."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from hearth.interpreter._contexts import Context, ContextClosed
from hearth.interpreter._http import Request, Response
from hearth.interpreter._languages import language, normalize

log = logging.getLogger(__name__)

ENVD_ENVS = "http://localhost:49983/envs"
DEFAULT_CWD = "/home/user"
CONTEXT_PATH = re.compile(r"^/contexts/([^/]+)(/restart)?$")


class Interpreter:
    """Every context of this sandbox and the default one of each language.

    Only the default python context's kernel is started with the server (health waits
    for it); every other default context exists from the start or its language's first
    use, and its kernel starts on its first execution or restart: an idle sandbox holds
    no javascript kernel (deno alone is ~200 MiB).
    """

    def __init__(self, default_cwd: str = DEFAULT_CWD) -> None:
        self.default_cwd = default_cwd
        self.contexts: dict[str, Context] = {}
        self._defaults: dict[str, Context] = {}  # language -> its default context
        self.ready = asyncio.Event()

    async def start(self) -> None:
        """Create the default python and javascript contexts; ready once python's
        kernel is warm."""
        python = self._default("python")
        self._default("javascript")
        await python.ensure_started()
        self.ready.set()

    async def close(self) -> None:
        await asyncio.gather(*(c.shutdown() for c in self.contexts.values()))

    def _default(self, name: str) -> Context:
        """The default context of language `name`, made (not started) if there is none."""
        context = self._defaults.get(name)
        if context is None:
            context = self._new(name, self.default_cwd)
            self.contexts[context.id] = self._defaults[name] = context
        return context

    def _new(self, name: str, cwd: str) -> Context:
        lang = language(name)
        if lang is None:
            raise ValueError(f"unsupported language: {name}")
        return Context(lang, cwd)

    async def create(self, name: str, cwd: str) -> Context:
        """A context made by the client: its kernel is started before it is listed."""
        context = self._new(name, cwd)
        await context.ensure_started()
        self.contexts[context.id] = context
        return context

    async def handle(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except Exception as e:  # noqa: BLE001 - the client gets the error as text
            log.exception("%s %s", request.method, request.path)
            return Response.text(str(e) or type(e).__name__, 500)

    async def _route(self, request: Request) -> Response:
        method, path = request.method, request.path
        if path == "/health" and method == "GET":
            if not self.ready.is_set():
                return Response.text("starting", 503)
            return Response.json("OK")
        if path == "/execute" and method == "POST":
            return await self._execute(request)
        if path == "/contexts":
            if method == "POST":
                body = _object(request)
                cwd = body.get("cwd") or self.default_cwd
                created = await self.create(normalize(body.get("language")), cwd)
                return Response.json(created.describe())
            if method == "GET":
                return Response.json([c.describe() for c in self.contexts.values()])
        match = CONTEXT_PATH.match(path)
        if match:
            context = self.contexts.get(match.group(1))
            if context is None:
                return Response.text(f"Context {match.group(1)} not found", 404)
            if match.group(2) and method == "POST":
                try:
                    await context.restart()
                except ContextClosed:
                    return Response.text(f"Context {context.id} not found", 404)
                return Response.json(None)
            if not match.group(2) and method == "DELETE":
                self._remove(context)
                await context.shutdown()
                return Response.json(None)
        return Response.text("Not Found", 404)

    def _remove(self, context: Context) -> None:
        self.contexts.pop(context.id, None)
        for name, default in list(self._defaults.items()):
            if default is context:
                del self._defaults[name]

    async def _execute(self, request: Request) -> Response:
        body = _object(request)
        code, context_id, lang = body.get("code"), body.get("context_id"), body.get("language")
        if not isinstance(code, str):
            return Response.text("code: a string is required", 422)
        if context_id and lang:
            return Response.text("Only one of context_id or language can be provided", 400)
        if context_id:
            context = self.contexts.get(context_id)
            if context is None:
                return Response.text(f"Context {context_id} not found", 404)
        else:
            context = self._default(normalize(lang))
        try:
            await context.ensure_started()  # the first run of a context starts its kernel
        except ContextClosed:
            return Response.text(f"Context {context.id} not found", 404)
        env_vars = body.get("env_vars") or None
        token = request.headers.get("x-access-token")
        lines = context.execute(code, env_vars, lambda: _sandbox_envs(token))
        return Response(200, stream=_ndjson(lines), content_type="application/x-ndjson")


def _object(request: Request) -> dict[str, Any]:
    value = request.json()
    return value if isinstance(value, dict) else {}


async def _ndjson(lines: AsyncGenerator[dict[str, Any], None]) -> AsyncIterator[bytes]:
    try:
        async for line in lines:
            yield json.dumps(line).encode() + b"\n"
    finally:
        await lines.aclose()


async def _sandbox_envs(token: str | None) -> dict[str, str]:
    """The sandbox's environment variables, from envd (spec §4.3)."""

    def fetch() -> dict[str, str]:
        request = urllib.request.Request(ENVD_ENVS)
        if token:
            request.add_header("X-Access-Token", token)
        # envd is on this machine: no proxy from the environment applies.
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with direct.open(request, timeout=10) as response:
                data = json.load(response)
        except OSError as e:
            log.warning("could not read the sandbox's env vars from envd: %s", e)
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    return await asyncio.to_thread(fetch)
