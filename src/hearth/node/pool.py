"""The warm pool: sandboxes started ahead of the creates, so that a create of a common
shape claims one already running (tens of milliseconds) instead of booting one.

Per template root kind the node keeps `size` sandboxes started with the template's
default cpu and memory, internet allowed, the template's start command run and ready,
and no access token. A create of that shape claims one: the runtime applies the
create's spec to it (envd's /init: access token, env vars, clock) and records the API's
id for it on disk, so a restarted node adopts it under that id, while a member never
claimed is removed by the restarted node's reconcile. Every claim, and every member
found dead, starts a refill in the background (after a short delay, so as not to slow
the claimant's first requests), one start at a time per kind.

Members are nobody's until claimed: the API does not know them, so neither its routing
map nor the proxy can reach them.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from hearth.node.disk.overlay_disk import DEFAULT_SIZE_MB
from hearth.node.interface import SandboxSpec

log = logging.getLogger(__name__)

RETRY_MIN, RETRY_MAX = 1.0, 60.0  # seconds between failed starts of a member
# A refill after a claim waits this long (seconds) first: a start costs ~250 ms of CPU,
# which the claimant's first requests would otherwise compete with on a small host.
REFILL_DELAY = 0.5


class _Member(Protocol):
    async def stop(self) -> None: ...


M = TypeVar("M", bound=_Member)


@dataclass(frozen=True)
class PoolShape:
    """What the members of one root kind's pool are started as, and how many."""

    kind: str
    template_id: str
    cpu_count: int
    memory_mb: int
    size: int
    disk_mb: int = DEFAULT_SIZE_MB

    def fits(self, spec: SandboxSpec) -> bool:
        """Whether a create of `spec` (of this kind) may take a member."""
        return (
            spec.cpu_count == self.cpu_count
            and spec.memory_mb == self.memory_mb
            and (spec.disk_mb or DEFAULT_SIZE_MB) == self.disk_mb
        )

    def member_spec(self) -> SandboxSpec:
        # Its own id (never the API's: a restarted node removes it unless claimed).
        return SandboxSpec(
            sandbox_id=secrets.token_hex(10),
            template_id=self.template_id,
            cpu_count=self.cpu_count,
            memory_mb=self.memory_mb,
            disk_mb=self.disk_mb,
        )


class WarmPool(Generic[M]):
    """Members per root kind. `start(spec, kind)` starts a ready member; `claim(member,
    kind, spec)` hands it to a create or raises (the member is then stopped)."""

    def __init__(
        self,
        start: Callable[[SandboxSpec, str], Awaitable[M]],
        claim: Callable[[M, str, SandboxSpec], Awaitable[None]],
    ) -> None:
        self._start = start
        self._claim = claim
        self._shapes: dict[str, PoolShape] = {}
        self._members: dict[str, deque[M]] = {}
        self._refills: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False

    def configure(self, shape: PoolShape) -> None:
        """Keep `shape.size` members of `shape.kind` (0: none), starting them in the
        background; members of an earlier shape of the kind are replaced."""
        if self._closed:
            return
        old = self._shapes.get(shape.kind)
        self._shapes[shape.kind] = shape
        if old is not None and old != shape:
            members = self._members.pop(shape.kind, deque())
            for member in members:
                self._stop_later(member)
        self._refill(shape.kind)

    def shape(self, kind: str) -> PoolShape | None:
        """What members of `kind` are kept as, if any are."""
        return self._shapes.get(kind)

    def sizes(self) -> dict[str, int]:
        """How many members wait now, per kind."""
        return {kind: len(self._members.get(kind, ())) for kind in self._shapes}

    async def take(self, kind: str, spec: SandboxSpec) -> M | None:
        """A member claimed for `spec`, or None (no pool of that shape, or it is empty):
        the create then starts a sandbox of its own."""
        shape = self._shapes.get(kind)
        if shape is None or self._closed or not shape.fits(spec):
            return None
        members = self._members.get(kind)
        try:
            while members:
                member = members.popleft()
                try:
                    await self._claim(member, kind, spec)
                except Exception as e:  # noqa: BLE001 - a dead member: the next one
                    log.warning("dropping a %s pool member that cannot be claimed: %s", kind, e)
                    self._stop_later(member)
                    continue
                except BaseException:
                    self._stop_later(member)  # cancelled mid-claim: nobody's now
                    raise
                return member
            return None
        finally:
            self._refill(kind, REFILL_DELAY)

    def _refill(self, kind: str, after: float = 0.0) -> None:
        running = self._refills.get(kind)
        if self._closed or (running is not None and not running.done()):
            return
        # A context of its own: the refill is no part of the create that triggered it.
        self._refills[kind] = asyncio.create_task(
            self._fill(kind, after), name=f"hearth-pool-{kind}", context=contextvars.Context()
        )

    async def _fill(self, kind: str, after: float) -> None:
        await asyncio.sleep(after)
        delay = RETRY_MIN
        while not self._closed:
            shape = self._shapes.get(kind)
            members = self._members.setdefault(kind, deque())
            if shape is None or len(members) >= shape.size:
                while shape is not None and len(members) > shape.size:
                    self._stop_later(members.pop())
                return
            try:
                member = await self._start(shape.member_spec(), kind)
            except Exception as e:  # noqa: BLE001 - logged, tried again later
                log.warning(
                    "starting a %s pool member failed (again in %.0f s): %s", kind, delay, e
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            if self._closed or self._shapes.get(kind) != shape:
                self._stop_later(member)  # closed or reshaped meanwhile
                continue
            members.append(member)

    def _stop_later(self, member: M) -> None:
        """Stop a member in the background (`close` waits for it)."""
        task = asyncio.create_task(_stop(member), context=contextvars.Context())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        """Stop refilling and stop every member; returns once all are released."""
        self._closed = True
        refills = list(self._refills.values())
        for task in refills:
            task.cancel()
        await asyncio.gather(*refills, return_exceptions=True)
        for members in self._members.values():
            while members:
                self._stop_later(members.popleft())
        while self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)


async def _stop(member: _Member) -> None:
    try:
        await member.stop()
    except Exception:
        log.exception("stopping a pool member failed")
