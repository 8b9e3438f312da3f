"""Snapshot and fork routes (spec §2.2 rows 17, 23, 24; §7.2). Deleting a snapshot is
deleting its template (`DELETE /templates/{id}`, in `templates`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from pydantic import BaseModel, ConfigDict

from hearth.api._auth import CurrentTeam
from hearth.api._deps import SandboxesDep, SettingsDep, SnapshotsDep
from hearth.api._errors import ApiError
from hearth.api._paging import paginate
from hearth.api._snapshots import SnapshotInfo
from hearth.api.routes.sandbox_schemas import SandboxCreated
from hearth.api.routes.sandboxes import SandboxId
from hearth.store import MAX_PAGE

router = APIRouter()


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SnapshotRequest(_Request):
    name: str | None = None
    memory: bool | None = None  # False: the files only (the SDK's mode="filesystem")


class ForkRequest(_Request):
    timeout: int = 15
    count: int = 1


def _out(info: SnapshotInfo) -> dict[str, Any]:
    """`SnapshotInfo`, with what Hearth adds: the sandbox it was taken of, when, and
    whether its creates continue the captured processes (`memory`)."""
    return {
        "snapshotID": info.snapshot_id,
        "names": info.names,
        "sandboxID": info.sandbox_id,
        "memory": info.memory,
        "createdAt": info.created_at.isoformat().replace("+00:00", "Z"),
    }


@router.post("/sandboxes/{sandbox_id}/snapshots", status_code=201)
async def create_snapshot(
    sandbox_id: SandboxId,
    team: CurrentTeam,
    snapshots: SnapshotsDep,
    body: Annotated[SnapshotRequest | None, Body()] = None,
) -> dict[str, Any]:
    body = body or SnapshotRequest()
    info = await snapshots.create(team, sandbox_id, name=body.name, memory=body.memory)
    return {"snapshotID": info.snapshot_id, "names": info.names}


@router.get("/snapshots")
async def list_snapshots(
    team: CurrentTeam,
    snapshots: SnapshotsDep,
    response: Response,
    sandbox_id: Annotated[str | None, Query(alias="sandboxID")] = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> list[dict[str, Any]]:
    found = await snapshots.list(team, sandbox_id=sandbox_id, name=name)
    page, token = paginate(
        found, lambda s: [-s.created_at.timestamp(), s.snapshot_id], limit, next_token
    )
    if token:
        response.headers["X-Next-Token"] = token
    return [_out(info) for info in page]


@router.post("/sandboxes/{sandbox_id}/fork", status_code=201)
async def fork_sandbox(
    sandbox_id: SandboxId,
    team: CurrentTeam,
    sandboxes: SandboxesDep,
    settings: SettingsDep,
    body: Annotated[ForkRequest | None, Body()] = None,
) -> list[dict[str, Any]]:
    """One entry per fork: `{"sandbox": Sandbox}` or `{"error": Error}`."""
    body = body or ForkRequest()
    results = await sandboxes.fork(team, sandbox_id, count=body.count, timeout=body.timeout)
    return [
        {"error": {"code": r.status, "message": r.message}}
        if isinstance(r, ApiError)
        else {"sandbox": SandboxCreated.of(r, settings.domain).model_dump()}
        for r in results
    ]
