"""A team's metrics (spec §2.2 rows 3 and 4): its running sandboxes and its start rate
over time, and the most of either in a range, derived from its sandboxes' lifecycle
(`api/_metrics.py`). A caller sees its own team's only: another team's id gets infra's
403, the same whether that team exists or not."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel

from hearth.api._auth import CurrentTeam
from hearth.api._deps import StoreDep
from hearth.api._errors import ApiError, responses
from hearth.api._metrics import (
    TEAM_RANGE,
    RangeError,
    UnixSeconds,
    max_concurrent,
    max_start_rate,
    team_series,
    time_range,
    unix,
)
from hearth.store import Team

router = APIRouter(responses=responses(400, 401, 403, 500))

TeamId = Annotated[str, Path(alias="teamID")]


class TeamMetric(BaseModel):
    timestamp: datetime
    timestampUnix: int
    concurrentSandboxes: int
    sandboxStartRate: float  # sandboxes started per second


class MaxTeamMetric(BaseModel):
    timestamp: datetime
    timestampUnix: int
    value: float


class TeamMetricName(StrEnum):
    concurrent_sandboxes = "concurrent_sandboxes"
    sandbox_start_rate = "sandbox_start_rate"


@router.get("/teams/{teamID}/metrics")
async def get_team_metrics(
    team_id: TeamId,
    team: CurrentTeam,
    store: StoreDep,
    start: UnixSeconds | None = None,
    end: UnixSeconds | None = None,
) -> list[TeamMetric]:
    """The team's running sandboxes and starts per second, one point per step of the
    range that has any (by default the last 7 days)."""
    begin, until, now = _range(team, team_id, start, end)
    points = await team_series(store, team.id, begin, until, now)
    return [
        TeamMetric(
            timestamp=p.timestamp,
            timestampUnix=unix(p.timestamp),
            concurrentSandboxes=p.concurrent,
            sandboxStartRate=p.start_rate,
        )
        for p in points
    ]


@router.get("/teams/{teamID}/metrics/max")
async def get_team_metrics_max(
    team_id: TeamId,
    team: CurrentTeam,
    store: StoreDep,
    metric: TeamMetricName,
    start: UnixSeconds | None = None,
    end: UnixSeconds | None = None,
) -> MaxTeamMetric:
    """The most of `metric` in the range (by default the last 7 days), and when; 0 for
    a range without sandboxes."""
    begin, until, _ = _range(team, team_id, start, end)
    if metric is TeamMetricName.concurrent_sandboxes:
        best = await max_concurrent(store, team.id, begin, until)
    else:
        best = await max_start_rate(store, team.id, begin, until)
    return MaxTeamMetric(
        timestamp=best.timestamp, timestampUnix=unix(best.timestamp), value=best.value
    )


def _range(
    team: Team, team_id: str, start: int | None, end: int | None
) -> tuple[datetime, datetime, datetime]:
    """The range asked for, once the caller is the team's; and now."""
    if team_id != team.id:
        raise ApiError(
            403, f"You ({team.id}) are not authorized to access this team's ({team_id}) metrics"
        )
    now = datetime.now(UTC)
    try:
        begin, until = time_range(start, end, now - TEAM_RANGE, now)
    except RangeError as e:
        raise ApiError(400, str(e)) from None
    return begin, until, now
