"""The metrics sampler: every few seconds, what each running sandbox of the node uses
of its own limits, written to the store; samples older than the retention are deleted
as it goes.

The node measures (a container from the host: its cgroup and its disk; a microVM
through its envd), the store keeps, and the metrics routes read the store. A sandbox
that is paused, or being paused, resumed or killed, is not sampled that round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from hearth.config import DEFAULT_METRICS_RETENTION_HOURS
from hearth.node.interface import Node, SandboxUsage
from hearth.store import SandboxMetric, Store

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 5.0  # seconds between two samples of a sandbox
RETENTION = DEFAULT_METRICS_RETENTION_HOURS * 3600  # seconds a sample is kept
PRUNE_INTERVAL = 60.0  # seconds between two deletions of what is past the retention


class MetricsSampler:
    def __init__(
        self,
        store: Store,
        node: Node,
        *,
        interval: float = SAMPLE_INTERVAL,
        retention: float = RETENTION,
    ) -> None:
        self._store = store
        self._node = node
        self.interval = interval
        self._retention = timedelta(seconds=retention)
        self._pruned = 0.0  # time.monotonic() of the last deletion

    async def run_forever(self) -> None:
        """Sample every `interval`, from the start of one round to the next's."""
        while True:
            began = time.monotonic()
            try:
                await self.tick()
            except Exception:
                log.exception("metrics sampling failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))

    async def tick(self) -> int:
        """One round: sample every running sandbox, keep the samples, delete what is past
        the retention (once a minute); how many sandboxes were sampled."""
        sampled = await self.sample()
        if time.monotonic() - self._pruned >= PRUNE_INTERVAL:
            self._pruned = time.monotonic()
            await self._store.prune_sandbox_metrics(datetime.now(UTC) - self._retention)
        return len(sampled)

    async def sample(self, sandbox_ids: Collection[str] | None = None) -> list[SandboxMetric]:
        """Sample the running sandboxes (or those of `sandbox_ids`) now and keep it."""
        usage = await self._node.usage(sandbox_ids)
        samples = [_metric(sandbox_id, u) for sandbox_id, u in usage.items()]
        await self._store.add_sandbox_metrics(samples)
        return samples


def _metric(sandbox_id: str, usage: SandboxUsage) -> SandboxMetric:
    return SandboxMetric(
        sandbox_id=sandbox_id,
        timestamp=datetime.fromtimestamp(usage.timestamp, UTC),
        cpu_count=usage.cpu_count,
        cpu_used_pct=usage.cpu_used_pct,
        mem_used=usage.mem_used,
        mem_total=usage.mem_total,
        mem_cache=usage.mem_cache,
        disk_used=usage.disk_used,
        disk_total=usage.disk_total,
    )
