"""Template builds as they run: each on the node, its log and outcome written to the store.

A build stays `waiting` until the builds of its template started before it are done
(one at a time per template, so its tags move in the order the builds were started) and
one of `concurrency` places on the node is free; it is `building` until the node returns
its artifact (`ready`) or fails (`error`, with the step and why). Log entries are
buffered and written every FLUSH_INTERVAL, and all of them before the final status: a
client paging the log until the build has finished (as the SDK does) sees every one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from hearth.api._errors import ApiError
from hearth.node.interface import BuildFailed, BuildRequest, Node
from hearth.store import Build, Store
from hearth.template.artifact import Artifact

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.2  # seconds; the SDK polls the status every 0.2 s
CANCELLED = "the build was cancelled"
INTERRUPTED = "the server stopped during the build; build again"
LEVELS = ("debug", "info", "warn", "error")
_LEVEL_ALIASES = {"warning": "warn", "fatal": "error", "critical": "error", "trace": "debug"}

# Called with each entry as the build logs it (level, message, step), e.g. to print it.
Echo = Callable[[str, str, str | None], None]


class TemplateBuilds:
    """The builds this API runs on its node, by build id and by template."""

    def __init__(
        self,
        store: Store,
        node: Node,
        *,
        concurrency: int = 2,
        ready: Callable[[Build], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._node = node
        self._ready = ready  # told of each build that becomes ready (warm pools)
        self._places = asyncio.Semaphore(max(1, concurrency))
        self._locks: dict[str, asyncio.Lock] = {}  # template id -> its builds, in turn
        self._tasks: dict[str, asyncio.Task[Build | None]] = {}  # build id ->
        self._by_template: dict[str, set[str]] = {}  # template id -> build ids
        self._held: Counter[str] = Counter()  # templates that may not start builds now
        self.outcomes: Counter[str] = Counter()  # builds finished: ready, error, cancelled
        self._closed = False

    def start(
        self, request: BuildRequest, *, recipe: dict[str, Any], echo: Echo | None = None
    ) -> asyncio.Task[Build | None]:
        """Run the waiting build `request.build_id` in the background; `recipe` is what
        its record keeps. The task's result is the finished build (None if its record
        vanished meanwhile)."""
        if self._closed:
            raise ApiError(503, "the server is stopping", retry=True)
        if self._held[request.template_id]:
            raise ApiError(409, f"template '{request.template_id}' is being deleted")
        if request.build_id in self._tasks:
            raise ApiError(409, f"build '{request.build_id}' has already been started")
        task = asyncio.create_task(
            self._run(request, recipe, _BuildLog(self._store, request.build_id, echo)),
            name=f"hearth-build-{request.build_id}",
        )
        self._tasks[request.build_id] = task
        self._by_template.setdefault(request.template_id, set()).add(request.build_id)
        task.add_done_callback(lambda _: self._forget(request))
        return task

    def on_node(self, build: Build) -> bool:
        """Whether the node still holds what the build made (its layer cache may have
        been wiped while the store kept the build)."""
        return build.artifact is not None and self._node.has_artifact(
            Artifact.from_json(build.artifact)
        )

    def running(self, build_id: str) -> bool:
        return build_id in self._tasks

    def in_progress(self) -> int:
        """How many builds wait or build now."""
        return len(self._tasks)

    async def wait(self, build_id: str) -> None:
        """Until the build running here ends, however it ends (at once if none is)."""
        task = self._tasks.get(build_id)
        if task is not None:
            await asyncio.wait({task})

    @contextlib.asynccontextmanager
    async def held(self, template_id: str) -> AsyncIterator[None]:
        """Cancel the template's builds, wait for them to end, and start none until the
        block ends (a template being deleted)."""
        self._held[template_id] += 1
        try:
            await self._cancel(self._by_template.get(template_id, set()))
            yield
        finally:
            self._held[template_id] -= 1
            if not self._held[template_id]:
                del self._held[template_id]

    async def fail_unfinished(self) -> None:
        """Builds a previous process left waiting or building never finish: say so."""
        for build in await self._store.unfinished_builds():
            if build.build_id in self._tasks:
                continue
            entries = _BuildLog(self._store, build.build_id, None)
            await _finish_failed(self._store, entries, build.build_id, INTERRUPTED, None)

    async def close(self) -> None:
        """Cancel every build and wait for each to record that it was cancelled."""
        self._closed = True
        await self._cancel(set(self._tasks))

    async def _cancel(self, build_ids: set[str]) -> None:
        tasks = [self._tasks[b] for b in list(build_ids) if b in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget(self, request: BuildRequest) -> None:
        self._tasks.pop(request.build_id, None)
        builds = self._by_template.get(request.template_id, set())
        builds.discard(request.build_id)
        if not builds:
            # No build of the template is running or waiting: nobody holds its lock.
            self._by_template.pop(request.template_id, None)
            self._locks.pop(request.template_id, None)

    async def _run(
        self, request: BuildRequest, recipe: dict[str, Any], entries: _BuildLog
    ) -> Build | None:
        build_id = request.build_id
        try:
            lock = self._locks.setdefault(request.template_id, asyncio.Lock())
            async with lock, self._places:
                await self._store.update_build(build_id, status="building", recipe=recipe)
                entries.start()
                artifact = await self._node.build(request, entries.add)
        except asyncio.CancelledError:
            self.outcomes["cancelled"] += 1
            # Recorded even when the cancel came from a client or a shutdown that will
            # not wait for it: the shielded write finishes on its own.
            await asyncio.shield(_finish_failed(self._store, entries, build_id, CANCELLED, None))
            raise
        except BuildFailed as e:
            self.outcomes["error"] += 1
            return await _finish_failed(self._store, entries, build_id, str(e), e.step)
        except Exception as e:
            log.exception("build %s of template %s failed", build_id, request.template_id)
            self.outcomes["error"] += 1
            return await _finish_failed(self._store, entries, build_id, f"{e}", None)
        self.outcomes["ready"] += 1
        await entries.close()
        try:
            build = await self._store.update_build(
                build_id,
                status="ready",
                artifact=artifact.to_json(),
                envd_version=artifact.envd_version,
            )
        except Exception:
            log.exception("recording build %s as ready failed", build_id)
            return None
        if self._ready is not None:
            try:
                await self._ready(build)
            except Exception:  # the build stands: what follows it only speeds creates up
                log.exception("after build %s became ready", build_id)
        return build


async def _finish_failed(
    store: Store, entries: _BuildLog, build_id: str, message: str, step: str | None
) -> Build | None:
    """The failure as the last log entry and as the build's reason (logs first: a client
    that sees the status has every entry to read)."""
    message = message or "the build failed"
    entries.add("error", f"Build failed: {message}", step)
    await entries.close()
    reason: dict[str, Any] = {"message": message}
    if step is not None:
        reason["step"] = step
    try:
        return await store.update_build(build_id, status="error", reason=reason)
    except Exception:
        log.exception("recording the failure of build %s failed", build_id)
        return None


class _BuildLog:
    """A build's log entries on their way to the store: `add` is the node's `BuildLog`
    (synchronous, on the event loop); a writer task flushes them every FLUSH_INTERVAL."""

    def __init__(self, store: Store, build_id: str, echo: Echo | None) -> None:
        self._store = store
        self._build_id = build_id
        self._echo = echo
        self._pending: list[tuple[datetime, str, str, str | None]] = []
        self._stop = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def add(self, level: str, message: str, step: str | None = None) -> None:
        level = _LEVEL_ALIASES.get(level, level)
        if level not in LEVELS:
            level = "info"  # the SDK's parser knows these four only
        step = None if step is None else str(step)
        self._pending.append((datetime.now(UTC), level, str(message), step))
        if self._echo is not None:
            try:
                self._echo(level, str(message), step)
            except Exception:  # a printer must not fail the build
                log.exception("echoing a build log entry failed")

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_forever())

    async def close(self) -> None:
        """Write what is pending and stop the writer (never cancelled mid-write: a
        half-done append could write an entry twice)."""
        self._stop.set()
        if self._writer is not None:
            await self._writer
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            while self._pending:
                batch = self._pending[:]
                try:
                    await self._store.append_build_logs(self._build_id, batch)
                except Exception:
                    log.exception("writing the log of build %s failed", self._build_id)
                    del self._pending[: len(batch)]
                    return
                del self._pending[: len(batch)]

    async def _write_forever(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_INTERVAL):
                    await self._stop.wait()
            await self.flush()
