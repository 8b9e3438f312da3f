"""Sandbox routes: create, list, get, kill, timeout, refresh, connect, pause, resume,
metrics (`_metrics.py`, sampled by `_sampler.py`), logs."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, TypedDict

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from pydantic import AfterValidator

from hearth.api._auth import CurrentTeam
from hearth.api._deps import SandboxesDep, SettingsDep, StoreDep
from hearth.api._errors import ApiError, responses, sandbox_not_found
from hearth.api._filters import decode_metadata, decode_states, decode_time
from hearth.api._limits import MAX_UNIX_MS
from hearth.api._logs import LEVELS as LOG_LEVELS
from hearth.api._logs import LogLine
from hearth.api._metrics import UnixSeconds
from hearth.api._network import egress_from
from hearth.api._paging import NEXT_TOKEN
from hearth.api._sandboxes import CreateRequest
from hearth.api.routes.sandbox_schemas import (
    ConnectSandbox,
    ConnectSandboxV2,
    ListedSandbox,
    LogLevel,
    LogsDirection,
    NewSandbox,
    NewSandboxV2,
    RefreshRequest,
    ResumedSandbox,
    Sandbox,
    SandboxDetail,
    SandboxesWithMetrics,
    SandboxLog,
    SandboxLogEntry,
    SandboxLogs,
    SandboxLogsV2Response,
    SandboxMetric,
    SandboxNetworkConfig,
    SandboxNetworkUpdateConfig,
    SandboxPauseRequest,
    TimeoutRequest,
)
from hearth.store import MAX_PAGE, InvalidCursor, SandboxState

router = APIRouter(responses=responses(400, 401, 500))


def _short_id(sandbox_id: str) -> str:
    """The sandbox id of `{sandboxID}-{clientID}`, as the 1.x SDKs name a sandbox in API
    paths (infra's `ShortID`); any other id as it is."""
    parts = sandbox_id.split("-")
    return parts[0] if len(parts) == 2 else sandbox_id


SandboxId = Annotated[str, Path(alias="sandboxID"), AfterValidator(_short_id)]
MAX_LOG_LIMIT = 1000  # log lines one call returns at most, infra's bound
# A time in milliseconds since the epoch.
UnixMillis = Annotated[int, Query(ge=0, le=MAX_UNIX_MS)]
MAX_METRICS_IDS = 100  # infra's bound on the sandboxes of one metrics request
SANDBOX_ID = re.compile(r"[a-z0-9]{1,64}")


# --- create ----------------------------------------------------------------------------


_CREATE_ERRORS = responses(404, 413, 429)


@router.post("/sandboxes", status_code=201, responses=_CREATE_ERRORS)
async def create_sandbox(
    body: NewSandbox, team: CurrentTeam, sandboxes: SandboxesDep, settings: SettingsDep
) -> Sandbox:
    request = _create_request(body, secure=bool(body.secure), default_timeout=15)
    return Sandbox.of(await sandboxes.create(team, request), settings.domain)


@router.post("/v2/sandboxes", status_code=201, responses=_CREATE_ERRORS)
async def create_sandbox_v2(
    body: NewSandboxV2,
    team: CurrentTeam,
    sandboxes: SandboxesDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Sandbox:
    request = _create_request(body, secure=True, default_timeout=300)
    sandbox = await sandboxes.create(team, request, idempotency_key)
    return Sandbox.of(sandbox, settings.domain)


def _create_request(body: NewSandboxV2, *, secure: bool, default_timeout: int) -> CreateRequest:
    auto_resume = bool(body.autoResume and body.autoResume.enabled)
    if body.autoPauseMemory is not None and not body.autoPause:
        raise ApiError(400, "autoPauseMemory can be set only when autoPause is true")
    if body.autoPauseMemory is False and auto_resume:
        raise ApiError(400, "autoPauseMemory false cannot be combined with autoResume")
    if body.volumeMounts:
        raise ApiError(400, "Volume mounts are not supported by this server")
    network = body.network.model_dump(exclude_none=True) if body.network else None
    if body.network is not None:
        _refuse_unsupported(body.network)
    allow_internet = body.allow_internet_access is not False
    public = body.network is None or body.network.allowPublicTraffic is not False
    return CreateRequest(
        template=body.templateID,
        timeout=default_timeout if body.timeout is None else body.timeout,
        secure=secure,
        metadata=dict(body.metadata or {}),
        env_vars=dict(body.envVars or {}),
        allow_internet=allow_internet,
        egress=egress_from(network, allow_internet),
        public_traffic=public,
        auto_pause=bool(body.autoPause),
        auto_resume=auto_resume,
        auto_pause_memory=body.autoPauseMemory is not False,
        network=network,
    )


def _refuse_unsupported(network: SandboxNetworkConfig | SandboxNetworkUpdateConfig) -> None:
    """A 400 for E2B network options this server does not implement, rather than a
    sandbox that silently lacks them."""
    for name in ("egressProxy", "dnsServers"):
        if getattr(network, name, None):
            raise ApiError(400, f"network.{name} is not supported by this server")


@router.put("/sandboxes/{sandboxID}/network", status_code=204, responses=responses(404, 413))
async def update_sandbox_network(
    sandbox_id: SandboxId,
    team: CurrentTeam,
    sandboxes: SandboxesDep,
    body: Annotated[SandboxNetworkUpdateConfig | None, Body()] = None,
) -> Response:
    """Replace the egress rules: an omitted field is cleared, an empty body clears them
    all."""
    body = body or SandboxNetworkUpdateConfig()
    _refuse_unsupported(body)
    network = body.model_dump(include={"allowOut", "denyOut", "rules"}, exclude_none=True)
    allow_internet = body.allow_internet_access is not False
    await sandboxes.update_network(team, sandbox_id, network, allow_internet)
    return Response(status_code=204)


# --- read ------------------------------------------------------------------------------


@router.get("/sandboxes")
async def list_sandboxes(
    team: CurrentTeam, store: StoreDep, metadata: str | None = None
) -> list[ListedSandbox]:
    """v1: every running sandbox (no pagination), oldest first, as infra sorts them."""
    pairs = decode_metadata(metadata) if metadata else None
    found, token = [], None
    while True:
        page, token = await store.list_sandboxes(
            team.id, states=[SandboxState.RUNNING], metadata=pairs, order="asc", next_token=token
        )
        found.extend(page)
        if token is None:
            return [ListedSandbox.of(s) for s in found]


class _Filters(TypedDict):
    """What a listing and its running count are both filtered by."""

    metadata: dict[str, str] | None
    template: str | None
    started_after: datetime | None


@router.get(
    "/v2/sandboxes",
    responses={
        200: {
            "headers": {
                **NEXT_TOKEN,
                "X-Total-Running": {
                    "description": "How many running sandboxes match, over every page",
                    "schema": {"type": "integer"},
                },
            }
        }
    },
)
async def list_sandboxes_v2(
    response: Response,
    team: CurrentTeam,
    store: StoreDep,
    metadata: str | None = None,
    state: Annotated[list[str] | None, Query()] = None,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    started_after: Annotated[str | None, Query(alias="startedAfter")] = None,
    template: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> list[ListedSandbox]:
    filters: _Filters = {
        "metadata": decode_metadata(metadata) if metadata else None,
        "template": template or None,
        "started_after": decode_time(started_after, "startedAfter"),
    }
    states = decode_states(state)
    try:
        page, token = await store.list_sandboxes(
            team.id,
            states=states,
            order="asc" if order == "asc" else "desc",
            limit=limit,
            next_token=next_token or None,
            **filters,
        )
    except InvalidCursor as e:
        raise ApiError(400, str(e)) from None
    if token:
        response.headers["X-Next-Token"] = token
    if SandboxState.RUNNING in states:
        response.headers["X-Total-Running"] = str(await store.count_running(team.id, **filters))
    return [ListedSandbox.of(s) for s in page]


# Before `/sandboxes/{sandboxID}`, which would take `metrics` for an id.
@router.get("/sandboxes/metrics")
async def get_sandboxes_metrics(
    request: Request,
    team: CurrentTeam,
    store: StoreDep,
    sandbox_ids: Annotated[
        str, Query(description="Sandbox ids, comma-separated or repeated (at most 100)")
    ],
) -> SandboxesWithMetrics:
    """The latest sample of each of the team's sandboxes asked for that has one; ids of
    other teams' sandboxes and unknown ones are left out."""
    # E2B's spec has an array sent comma-separated (explode: false); clients that send
    # it exploded repeat the parameter, and every repetition counts.
    given = request.query_params.getlist("sandbox_ids") or [sandbox_ids]
    wanted = list(dict.fromkeys(_short_id(i) for part in given for i in part.split(",")))
    if len(wanted) > MAX_METRICS_IDS:
        raise ApiError(400, f"Too many sandboxes requested, maximum is {MAX_METRICS_IDS}")
    # What cannot be a sandbox id names none (and never reaches the database).
    ids = [i for i in wanted if SANDBOX_ID.fullmatch(i)]
    latest = await store.latest_sandbox_metrics(team.id, ids)
    return SandboxesWithMetrics(sandboxes={i: SandboxMetric.of(m) for i, m in latest.items()})


# The parser crashes on a `network: null`; an absent optional field is always safe.
@router.get("/sandboxes/{sandboxID}", response_model_exclude_none=True, responses=responses(404))
async def get_sandbox(
    sandbox_id: SandboxId, team: CurrentTeam, sandboxes: SandboxesDep, settings: SettingsDep
) -> SandboxDetail:
    return SandboxDetail.of_detail(await sandboxes.get(team, sandbox_id), settings.domain)


@router.get("/sandboxes/{sandboxID}/metrics", responses=responses(404))
async def get_sandbox_metrics(
    sandbox_id: SandboxId,
    team: CurrentTeam,
    sandboxes: SandboxesDep,
    start: UnixSeconds | None = None,
    end: UnixSeconds | None = None,
) -> list[SandboxMetric]:
    """The sandbox's sampled use from `start` to `end` (Unix seconds; by default since
    it started), running, paused or killed (for as long as its samples are kept)."""
    metrics = await sandboxes.metrics(team, sandbox_id, start, end)
    return [SandboxMetric.of(m) for m in metrics]


@router.get("/sandboxes/{sandboxID}/logs", responses=responses(404))
async def get_sandbox_logs(
    sandbox_id: SandboxId,
    team: CurrentTeam,
    sandboxes: SandboxesDep,
    start: UnixMillis | None = None,
    limit: Annotated[int, Query(ge=0, le=MAX_LOG_LIMIT)] = MAX_LOG_LIMIT,
) -> SandboxLogs:
    """v1 logs (what the E2B CLI reads): the oldest `limit` lines from `start` (ms) on,
    each `line` one JSON object with `level`, `logger`, `message` and its fields."""
    since = datetime.fromtimestamp(start / 1000, UTC) if start else None
    lines = await sandboxes.read_logs(team, sandbox_id, since, limit)
    return SandboxLogs(
        logs=[SandboxLog(timestamp=line.timestamp, line=line.raw) for line in lines],
        logEntries=[_entry(line) for line in lines],
    )


@router.get("/v2/sandboxes/{sandboxID}/logs", responses=responses(404))
async def get_sandbox_logs_v2(
    sandbox_id: SandboxId,
    team: CurrentTeam,
    sandboxes: SandboxesDep,
    cursor: UnixMillis | None = None,
    limit: Annotated[int, Query(ge=0, le=MAX_LOG_LIMIT)] = MAX_LOG_LIMIT,
    direction: LogsDirection | None = None,
    level: LogLevel | None = None,
    search: Annotated[str | None, Query(max_length=256)] = None,
) -> SandboxLogsV2Response:
    """Structured logs, as infra pages them: `forward` takes the oldest `limit` from
    `cursor` (ms) on, `backward` (the default) the newest before it, both oldest first;
    `level` is the lowest level shown, `search` a case-sensitive part of the message."""
    at = datetime.fromtimestamp(cursor / 1000, UTC) if cursor is not None else None
    forward = direction == "forward"
    # Unfiltered, only `limit` lines are read; a filter needs them all.
    filtered = level is not None or bool(search) or (not forward and at is not None)
    lines = await sandboxes.read_logs(
        team, sandbox_id, at if forward else None, None if filtered else limit, not forward
    )
    if not forward and at is not None:
        lines = [line for line in lines if line.timestamp < at]
    if level is not None:
        lowest = LOG_LEVELS.index(level)
        lines = [line for line in lines if LOG_LEVELS.index(line.level) >= lowest]
    if search:
        lines = [line for line in lines if search in line.message]
    picked = lines[:limit] if forward else lines[max(len(lines) - limit, 0) :]
    return SandboxLogsV2Response(logs=[_entry(line) for line in picked])


def _entry(line: LogLine) -> SandboxLogEntry:
    return SandboxLogEntry(
        timestamp=line.timestamp, message=line.message, level=line.level, fields=line.fields()
    )


# --- change ----------------------------------------------------------------------------


@router.delete("/sandboxes/{sandboxID}", status_code=204, responses=responses(404))
async def kill_sandbox(
    sandbox_id: SandboxId, team: CurrentTeam, sandboxes: SandboxesDep
) -> Response:
    if not await sandboxes.kill(team.id, sandbox_id):
        raise sandbox_not_found(sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandboxID}/timeout", status_code=204, responses=responses(404, 413))
async def set_sandbox_timeout(
    sandbox_id: SandboxId, body: TimeoutRequest, team: CurrentTeam, sandboxes: SandboxesDep
) -> Response:
    await sandboxes.set_timeout(team, sandbox_id, body.timeout)
    return Response(status_code=204)


@router.post("/sandboxes/{sandboxID}/refreshes", status_code=204, responses=responses(404, 413))
async def refresh_sandbox(
    sandbox_id: SandboxId,
    team: CurrentTeam,
    sandboxes: SandboxesDep,
    body: Annotated[RefreshRequest | None, Body()] = None,
) -> Response:
    await sandboxes.refresh(team, sandbox_id, (body or RefreshRequest()).duration)
    return Response(status_code=204)


# 200: it runs; 201: it was paused and is resumed (409 while its snapshot is taken).
_CONNECT = {201: {"model": Sandbox, "description": "Resumed"}, **responses(404, 409, 413, 429)}


@router.post("/sandboxes/{sandboxID}/connect", responses=_CONNECT)
async def connect_sandbox(
    sandbox_id: SandboxId,
    body: ConnectSandbox,
    team: CurrentTeam,
    sandboxes: SandboxesDep,
    settings: SettingsDep,
    response: Response,
) -> Sandbox:
    """200: it runs (its end only extended); 201: it was paused and is resumed."""
    sandbox, resumed = await sandboxes.connect(team, sandbox_id, body.timeout, body.memory)
    response.status_code = 201 if resumed else 200
    return Sandbox.of(sandbox, settings.domain)


@router.post("/v2/sandboxes/{sandboxID}/connect", responses=_CONNECT)
async def connect_sandbox_v2(
    sandbox_id: SandboxId,
    team: CurrentTeam,
    sandboxes: SandboxesDep,
    settings: SettingsDep,
    response: Response,
    body: Annotated[ConnectSandboxV2 | None, Body()] = None,
) -> Sandbox:
    body = body or ConnectSandboxV2()
    sandbox, resumed = await sandboxes.connect(team, sandbox_id, body.timeout, body.memory)
    response.status_code = 201 if resumed else 200
    return Sandbox.of(sandbox, settings.domain)


# 501: the node's runtime cannot pause.
@router.post(
    "/sandboxes/{sandboxID}/pause", status_code=204, responses=responses(404, 409, 413, 501)
)
async def pause_sandbox(
    sandbox_id: SandboxId,
    team: CurrentTeam,
    sandboxes: SandboxesDep,
    body: Annotated[SandboxPauseRequest | None, Body()] = None,
) -> Response:
    """204 paused (also for pauses that arrive while one is under way); 409 already
    paused; 404. `memory: false` keeps only the filesystem."""
    await sandboxes.pause(team.id, sandbox_id, memory=(body or SandboxPauseRequest()).memory)
    return Response(status_code=204)


@router.post(
    "/sandboxes/{sandboxID}/resume", status_code=201, responses=responses(404, 409, 413, 429)
)
async def resume_sandbox(
    sandbox_id: SandboxId,
    team: CurrentTeam,
    sandboxes: SandboxesDep,
    settings: SettingsDep,
    body: Annotated[ResumedSandbox | None, Body()] = None,
) -> Sandbox:
    """Deprecated (connect resumes too): 201 resumed, 409 running, 404."""
    body = body or ResumedSandbox()
    sandbox = await sandboxes.resume(team, sandbox_id, body.timeout, body.memory)
    return Sandbox.of(sandbox, settings.domain)
