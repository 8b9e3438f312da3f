"""Snapshot and fork routes (spec §2.2 rows 17, 23, 24; §7.2). Deleting a snapshot is
deleting its template (`DELETE /templates/{id}`, in `templates`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Query, Response
from pydantic import BaseModel

from hearth.api import _snapshots
from hearth.api._auth import CurrentTeam
from hearth.api._deps import SandboxesDep, SettingsDep, SnapshotsDep
from hearth.api._errors import ApiError, Error, responses
from hearth.api._limits import Int32, RequestBody
from hearth.api._paging import NEXT_TOKEN, paginate
from hearth.api.routes.sandbox_schemas import Sandbox
from hearth.api.routes.sandboxes import SandboxId
from hearth.store import MAX_PAGE

router = APIRouter(responses=responses(400, 401, 500))


class SandboxSnapshotRequest(RequestBody):
    name: str | None = None
    memory: bool | None = None  # False: the files only (the SDK's mode="filesystem")


class SandboxForkRequest(RequestBody):
    timeout: Int32 = 15
    count: Int32 = 1


class SnapshotInfo(BaseModel):
    """E2B's `SnapshotInfo`; the list adds what Hearth knows: the sandbox it was taken
    of, when, and whether its creates continue the captured processes (`memory`)."""

    snapshotID: str
    names: list[str]
    sandboxID: str | None = None
    memory: bool | None = None
    createdAt: datetime | None = None

    @classmethod
    def of(cls, info: _snapshots.SnapshotInfo) -> SnapshotInfo:
        return cls(
            snapshotID=info.snapshot_id,
            names=info.names,
            sandboxID=info.sandbox_id,
            memory=info.memory,
            createdAt=info.created_at,
        )


class SandboxForkResult(BaseModel):
    """One fork: the sandbox it started, or why it did not start."""

    sandbox: Sandbox | None = None
    error: Error | None = None


@router.post(
    "/sandboxes/{sandboxID}/snapshots",
    status_code=201,
    response_model_exclude_none=True,
    responses=responses(404, 409, 413, 429),
)
async def create_snapshot(
    sandbox_id: SandboxId,
    team: CurrentTeam,
    snapshots: SnapshotsDep,
    body: Annotated[SandboxSnapshotRequest | None, Body()] = None,
) -> SnapshotInfo:
    body = body or SandboxSnapshotRequest()
    info = await snapshots.create(team, sandbox_id, name=body.name, memory=body.memory)
    return SnapshotInfo(snapshotID=info.snapshot_id, names=info.names)


@router.get("/snapshots", responses={200: {"headers": NEXT_TOKEN}})
async def list_snapshots(
    team: CurrentTeam,
    snapshots: SnapshotsDep,
    response: Response,
    sandbox_id: Annotated[str | None, Query(alias="sandboxID")] = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> list[SnapshotInfo]:
    found = await snapshots.list(team, sandbox_id=sandbox_id, name=name)
    page, token = paginate(
        found, lambda s: [-s.created_at.timestamp(), s.snapshot_id], limit, next_token
    )
    if token:
        response.headers["X-Next-Token"] = token
    return [SnapshotInfo.of(info) for info in page]


@router.post(
    "/sandboxes/{sandboxID}/fork",
    status_code=201,
    response_model_exclude_unset=True,
    responses=responses(404, 409, 413),
)
async def fork_sandbox(
    sandbox_id: SandboxId,
    team: CurrentTeam,
    sandboxes: SandboxesDep,
    settings: SettingsDep,
    body: Annotated[SandboxForkRequest | None, Body()] = None,
) -> list[SandboxForkResult]:
    """One entry per fork: `{"sandbox": Sandbox}` or `{"error": Error}`."""
    body = body or SandboxForkRequest()
    results = await sandboxes.fork(team, sandbox_id, count=body.count, timeout=body.timeout)
    return [
        SandboxForkResult(error=Error(code=r.status, message=r.message))
        if isinstance(r, ApiError)
        else SandboxForkResult(sandbox=Sandbox.of(r, settings.domain))
        for r in results
    ]
