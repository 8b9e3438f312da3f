"""Template routes the SDK and CLI read: the list, and whether an alias exists."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from hearth.api._auth import CurrentTeam
from hearth.api._deps import StoreDep
from hearth.api._errors import ApiError
from hearth.store import Template as TemplateRecord

router = APIRouter()


class TemplateOut(BaseModel):
    """`Template` of the OpenAPI spec (every field the Python parser pops is here)."""

    templateID: str
    buildID: str
    cpuCount: int
    memoryMB: int
    diskSizeMB: int
    public: bool
    aliases: list[str]
    names: list[str]
    createdAt: datetime
    updatedAt: datetime
    createdBy: None = None
    lastSpawnedAt: datetime | None
    spawnCount: int
    buildCount: int
    envdVersion: str
    buildStatus: Literal["building", "waiting", "ready", "error"]

    @classmethod
    def of(cls, t: TemplateRecord) -> TemplateOut:
        return cls(
            templateID=t.template_id,
            # A template that was never built here (a seeded one) still needs an id.
            buildID=t.build_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"hearth:{t.template_id}")),
            cpuCount=t.cpu_count,
            memoryMB=t.memory_mb,
            diskSizeMB=t.disk_size_mb,
            public=t.public,
            aliases=list(t.aliases),
            names=list(t.aliases) or [t.template_id],
            createdAt=t.created_at,
            updatedAt=t.updated_at,
            lastSpawnedAt=t.last_spawned_at,
            spawnCount=t.spawn_count,
            buildCount=t.build_count,
            envdVersion=t.envd_version,
            buildStatus="ready",
        )


class TemplateAlias(BaseModel):
    templateID: str
    public: bool


@router.get("/templates")
async def list_templates(
    team: CurrentTeam,
    store: StoreDep,
    team_id: Annotated[str | None, Query(alias="teamID")] = None,
) -> list[TemplateOut]:
    if team_id is not None and team_id != team.id:
        raise ApiError(400, f"teamID {team_id!r} is not the team of this API key")
    return [TemplateOut.of(t) for t in await store.list_templates(team.id, include_public=True)]


@router.get("/templates/aliases/{alias}")
async def get_template_alias(alias: str, team: CurrentTeam, store: StoreDep) -> TemplateAlias:
    """200 if the team may use it, 403 if it is another team's (it exists), else 404."""
    template = await store.get_template(team.id, alias)
    if template is None:
        if await store.find_template(alias) is not None:
            raise ApiError(403, f"You don't have access to template '{alias}'")
        raise ApiError(404, f"Template alias '{alias}' not found")
    return TemplateAlias(templateID=template.template_id, public=template.public)
