"""Reading metrics as E2B answers them: the time range a request asks for (checked as
infra checks it), the step its points are spaced by, a sandbox's samples at that step,
and a team's series of running sandboxes and starts, derived from its sandboxes'
lifecycle events.

A team's running sandboxes at a moment are those whose last lifecycle event by then
started them (a create or a resume); its start rate is its creates per second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Query

from hearth.api._limits import INT64_MAX
from hearth.store import CREATED, LifecycleEvent, SandboxMetric, Store

# A `start` or `end`: seconds since the epoch, an int64 as in E2B's spec (past MAX_TIME
# refused as infra refuses it).
UnixSeconds = Annotated[int, Query(ge=0, le=INT64_MAX)]
# The last time infra accepts (ClickHouse's DateTime64), and how Go prints it.
MAX_TIME = datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
MAX_TIME_TEXT = "2299-12-31 23:59:59.999999999 +0000 UTC"
MAX_UNIX = int(MAX_TIME.timestamp())
TEAM_RANGE = timedelta(days=7)  # a team's metrics without `start`: the last week
START_RATE_WINDOW = timedelta(seconds=5)  # the start rate's maximum is over such windows
# Infra's steps by the length of the range (clickhouse utils.CalculateStep): under 1000
# points whatever the range.
_STEPS = (
    (timedelta(hours=1), timedelta(seconds=5)),
    (timedelta(hours=6), timedelta(seconds=30)),
    (timedelta(hours=12), timedelta(minutes=1)),
    (timedelta(hours=24), timedelta(minutes=2)),
    (timedelta(days=7), timedelta(minutes=5)),
)
_LONGEST_STEP = timedelta(minutes=15)


class RangeError(ValueError):
    """A time range infra refuses; the message is infra's."""


def time_range(
    start: int | None, end: int | None, default_start: datetime, default_end: datetime
) -> tuple[datetime, datetime]:
    """The range `start`..`end` (Unix seconds, each defaulted) as infra validates it."""
    if start is not None and start > MAX_UNIX:
        raise RangeError(f"start time cannot be after {MAX_TIME_TEXT}")
    if end is not None and end > MAX_UNIX:
        raise RangeError(f"end time cannot be after {MAX_TIME_TEXT}")
    begin = datetime.fromtimestamp(start, UTC) if start is not None else default_start
    until = datetime.fromtimestamp(end, UTC) if end is not None else default_end
    if begin > until:
        raise RangeError("start time cannot be after end time")
    return begin, until


def step(start: datetime, end: datetime) -> timedelta:
    """How far apart the points of a range are."""
    length = end - start
    return next((s for bound, s in _STEPS if length < bound), _LONGEST_STEP)


def at_step(
    samples: Sequence[SandboxMetric], start: datetime, every: timedelta
) -> list[SandboxMetric]:
    """`samples` (oldest first) one per `every` from `start`: each point the last sample
    of its interval, with the interval's mean CPU and its most memory and disk used.
    Samples already as far apart are returned as they are."""
    groups: dict[int, list[SandboxMetric]] = {}
    for sample in samples:
        groups.setdefault((sample.timestamp - start) // every, []).append(sample)
    if all(len(group) == 1 for group in groups.values()):
        return list(samples)
    points = []
    for group in groups.values():
        last = group[-1]
        points.append(
            SandboxMetric(
                sandbox_id=last.sandbox_id,
                timestamp=last.timestamp,
                cpu_count=last.cpu_count,
                cpu_used_pct=round(sum(s.cpu_used_pct for s in group) / len(group), 2),
                mem_used=max(s.mem_used for s in group),
                mem_total=last.mem_total,
                mem_cache=last.mem_cache,
                disk_used=max(s.disk_used for s in group),
                disk_total=last.disk_total,
            )
        )
    return points


@dataclass(frozen=True)
class TeamPoint:
    """One step of a team's series: its most running sandboxes in it, its creates."""

    timestamp: datetime
    concurrent: int
    start_rate: float  # creates per second over the step


@dataclass(frozen=True)
class TeamMax:
    timestamp: datetime
    value: float


async def team_series(
    store: Store, team_id: str, start: datetime, end: datetime, now: datetime
) -> list[TeamPoint]:
    """The team's points from `start` to `end`, one per step that has any (E2B answers
    an idle team with none)."""
    every = step(start, end)
    running, events = await store.lifecycle_events(team_id, start, end)
    peak: dict[int, int] = {}
    starts: dict[int, int] = {}
    held = set(running)

    def hold(first: int, last: int) -> None:
        """The running count held from step `first` through `last`."""
        if held:
            for index in range(first, last + 1):
                peak[index] = max(peak.get(index, 0), len(held))

    index = 0
    for event in events:
        at = (event.timestamp - start) // every
        hold(index, at)
        index = at
        _apply(held, event)
        hold(at, at)
        if event.type == CREATED:
            starts[at] = starts.get(at, 0) + 1
    # Held on to the last step that begins before the range's end, or now if sooner.
    until = min(end, max(now, start))
    hold(index, max(index, math.ceil((until - start) / every) - 1))
    seconds = every.total_seconds()
    return [
        TeamPoint(
            timestamp=start + i * every,
            concurrent=peak.get(i, 0),
            start_rate=round(starts.get(i, 0) / seconds, 6),
        )
        for i in sorted(peak.keys() | starts.keys())
    ]


async def max_concurrent(store: Store, team_id: str, start: datetime, end: datetime) -> TeamMax:
    """The most sandboxes the team ran at once in the range, and when it first did."""
    running, events = await store.lifecycle_events(team_id, start, end)
    held = set(running)
    best = TeamMax(start, float(len(held)))
    for event in events:
        _apply(held, event)
        if len(held) > best.value:
            best = TeamMax(event.timestamp, float(len(held)))
    return best


async def max_start_rate(store: Store, team_id: str, start: datetime, end: datetime) -> TeamMax:
    """The most creates per second of the range, over windows of START_RATE_WINDOW."""
    _, events = await store.lifecycle_events(team_id, start, end)
    windows: dict[int, int] = {}
    for event in events:
        if event.type == CREATED:
            window = (event.timestamp - start) // START_RATE_WINDOW
            windows[window] = windows.get(window, 0) + 1
    if not windows:
        return TeamMax(start, 0.0)
    window, count = max(windows.items(), key=lambda item: (item[1], -item[0]))
    rate = count / START_RATE_WINDOW.total_seconds()
    return TeamMax(start + window * START_RATE_WINDOW, round(rate, 6))


def _apply(held: set[str], event: LifecycleEvent) -> None:
    if event.starts:
        held.add(event.sandbox_id)
    else:
        held.discard(event.sandbox_id)


def unix(moment: datetime) -> int:
    return math.floor(moment.timestamp())
