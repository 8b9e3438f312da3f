"""The upstream connections open to each sandbox, cut when the sandbox goes away.

A sandbox that is killed or paused does not always close its connections itself: a
microVM's guest sends nothing when its VMM is killed, a frozen container never
answers, so a command's stream through the gateway would wait on it for ever. E2B's
proxy closes a sandbox's connections when the orchestrator drops the sandbox
(`RemoveFromPool`). The directory here has no such event, so the gateway looks the
sandboxes of its open connections up every `INTERVAL` and aborts the connections of
those that are gone, or that now run somewhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from hearth.proxy._relay import Peer

# How soon after a kill or pause its streams end; each look-up is a dict read.
INTERVAL = 0.25


class SandboxStreams:
    """`held()` registers a connection to a sandbox for as long as it is in use.

    `host_of(sandbox_id)` says where a sandbox runs now (None: it is not running).
    """

    def __init__(self, host_of: Callable[[str], str | None], *, interval: float = INTERVAL) -> None:
        self._host_of = host_of
        self._interval = interval
        self._open: dict[str, dict[Peer, str]] = {}  # sandbox id -> connection -> host
        self._watcher: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def held(self, sandbox_id: str, host: str, upstream: Peer) -> Iterator[None]:
        """`upstream` (a connection to `sandbox_id` at `host`) is aborted if the sandbox
        stops running there while this is entered."""
        connections = self._open.setdefault(sandbox_id, {})
        connections[upstream] = host
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="hearth-proxy-streams")
        try:
            yield
        finally:
            connections.pop(upstream, None)
            if not connections and self._open.get(sandbox_id) is connections:
                del self._open[sandbox_id]

    def cut(self, sandbox_id: str) -> None:
        """Abort every connection held to `sandbox_id` that no longer leads to it."""
        host = self._host_of(sandbox_id)
        for upstream, opened_to in list(self._open.get(sandbox_id, {}).items()):
            if host != opened_to:
                upstream.abort()

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    async def _watch(self) -> None:
        while self._open:
            await asyncio.sleep(self._interval)
            for sandbox_id in list(self._open):
                self.cut(sandbox_id)
