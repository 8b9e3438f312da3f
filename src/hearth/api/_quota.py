"""Each team's limits as the API applies them: its own (`TeamLimits`, set with `hearth
teams set`) where it has them, else the server's; and the window of its recent starts.
Every refusal is E2B's 429 (concurrency, as E2B words it; starts, as its rate limiter)."""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from hearth.api._errors import ApiError
from hearth.api._settings import ApiSettings
from hearth.store import TeamLimits

_MORE = "If you need more, please visit 'https://e2b.dev/docs/billing'"
RATE_WINDOW = 1.0  # seconds over which starts per second are counted


@dataclass(frozen=True)
class Quota:
    """One team's limits in force; 0: none."""

    concurrent: int
    vcpus: int
    memory_mb: int
    starts_per_second: int
    max_timeout: int

    @classmethod
    def of(cls, limits: TeamLimits, settings: ApiSettings) -> Quota:
        def pick(own: int | None, default: int) -> int:
            return default if own is None else own

        return cls(
            concurrent=pick(limits.concurrent_sandboxes, settings.max_concurrent),
            vcpus=pick(limits.vcpus, settings.max_vcpus),
            memory_mb=pick(limits.memory_mb, settings.max_memory_mb),
            starts_per_second=pick(limits.starts_per_second, settings.max_starts_per_second),
            # A team's own may be longer than the server's: an operator's choice.
            max_timeout=pick(limits.max_timeout, settings.max_timeout),
        )

    def check(self, count: int, vcpus: int, memory_mb: int) -> None:
        """429 unless one more sandbox, holding the last of `vcpus` and `memory_mb`
        beside `count` others, fits."""
        if self.concurrent and count >= self.concurrent:
            raise ApiError(
                429,
                "you have reached the maximum number of concurrent E2B sandboxes"
                f" ({self.concurrent}). {_MORE}",
            )
        if self.vcpus and vcpus > self.vcpus:
            raise ApiError(
                429,
                f"you have reached the maximum number of vCPUs of concurrent E2B sandboxes"
                f" ({self.vcpus}). {_MORE}",
            )
        if self.memory_mb and memory_mb > self.memory_mb:
            raise ApiError(
                429,
                f"you have reached the maximum memory of concurrent E2B sandboxes"
                f" ({self.memory_mb} MiB). {_MORE}",
            )


class StartWindow:
    """The starts of each team over the last second, against its starts per second."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._starts: defaultdict[str, deque[float]] = defaultdict(deque)

    def admit(self, team_id: str, per_second: int) -> None:
        """Count a start, or refuse it with E2B's rate-limit answer and when to retry."""
        if not per_second:
            return
        now = self._clock()
        starts = self._starts[team_id]
        while starts and starts[0] <= now - RATE_WINDOW:
            starts.popleft()
        if len(starts) >= per_second:
            wait = max(1, math.ceil(starts[0] + RATE_WINDOW - now))
            raise ApiError(
                429,
                "Rate limit exceeded",
                retry=True,
                headers={
                    "Retry-After": str(wait),
                    "RateLimit-Limit": str(per_second),
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": str(wait),
                },
            )
        starts.append(now)
