"""Template routes: register and start builds, upload their files, follow their status and
logs, list, get, publish, tag and delete templates (spec §2.5, §5)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from hearth.api._auth import CurrentTeam
from hearth.api._deps import TemplatesDep
from hearth.api._errors import ApiError, responses
from hearth.api._limits import INT32_MAX, MAX_UNIX_MS
from hearth.api._paging import NEXT_TOKEN, paginate
from hearth.api._uploads import UPLOAD_PATH
from hearth.api.routes.template_schemas import (
    AssignedTemplateTags,
    AssignTemplateTagsRequest,
    BuildLogEntry,
    DeleteTemplateTagsRequest,
    LogLevel,
    Template,
    TemplateAliasResponse,
    TemplateBuild,
    TemplateBuildFileUpload,
    TemplateBuildInfo,
    TemplateBuildLogsResponse,
    TemplateBuildRequestV3,
    TemplateBuildStartV2,
    TemplateRequestResponseV3,
    TemplateTag,
    TemplateUpdateRequest,
    TemplateUpdateResponse,
    TemplateWithBuilds,
)
from hearth.store import MAX_PAGE

router = APIRouter()
# Every route but the upload link's takes the API key; 403: another team's template.
_ERRORS = responses(400, 401, 403, 404, 500)
TemplateId = Annotated[str, Path(alias="templateID")]
BuildId = Annotated[str, Path(alias="buildID")]

# Routes with a fixed segment come before the `{template_id}` ones they would match.


# --- build -----------------------------------------------------------------------------


@router.post("/v3/templates", status_code=202, responses={**_ERRORS, **responses(413, 429)})
async def request_build(
    body: TemplateBuildRequestV3, team: CurrentTeam, templates: TemplatesDep
) -> TemplateRequestResponseV3:
    template, build = await templates.register(
        team,
        name=body.name if body.name is not None else body.alias,
        tags=body.tags,
        cpu_count=body.cpuCount,
        memory_mb=body.memoryMB,
        min_free_disk_mb=body.minFreeDiskMb,
        team_id=body.teamID,
    )
    return TemplateRequestResponseV3.of(template, build)


@router.get("/templates/{templateID}/files/{hash}", status_code=201, responses=_ERRORS)
async def file_upload_link(
    template_id: TemplateId,
    files_hash: Annotated[str, Path(alias="hash")],
    request: Request,
    team: CurrentTeam,
    templates: TemplatesDep,
) -> TemplateBuildFileUpload:
    url = await templates.upload_link(team, template_id, files_hash, _base_url(request))
    return TemplateBuildFileUpload(present=url is None, url=url)


@router.put(
    UPLOAD_PATH + "/{token}",
    response_class=Response,
    responses={
        200: {"description": "Uploaded"},
        **responses(400, 404, 410, 500),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def upload_files(token: str, request: Request, templates: TemplatesDep) -> Response:
    """The PUT of an upload link (a tar of a COPY step's files): no API key (the SDK
    sends none), the token is the key; once, before it expires (410 after either)."""
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise ApiError(400, "invalid Content-Length")
    await templates.receive_upload(token, request.stream(), int(length) if length else None)
    return Response(status_code=200)


@router.post(
    "/v2/templates/{templateID}/builds/{buildID}",
    status_code=202,
    response_class=Response,
    responses={**_ERRORS, **responses(409, 413), 202: {"description": "Started"}},
)
async def start_build(
    template_id: TemplateId,
    build_id: BuildId,
    body: TemplateBuildStartV2,
    team: CurrentTeam,
    templates: TemplatesDep,
) -> Response:
    await templates.start_build(team, template_id, build_id, body.model_dump(exclude_none=True))
    return Response(status_code=202)


@router.get("/templates/{templateID}/builds/{buildID}/status", responses=_ERRORS)
async def build_status(
    template_id: TemplateId,
    build_id: BuildId,
    team: CurrentTeam,
    templates: TemplatesDep,
    logs_offset: Annotated[int, Query(alias="logsOffset", ge=0, le=INT32_MAX)] = 0,
    limit: Annotated[int, Query(ge=0, le=MAX_PAGE)] = MAX_PAGE,
    level: LogLevel | None = None,
) -> TemplateBuildInfo:
    _, build, entries = await templates.build_status(
        team, template_id, build_id, offset=logs_offset, limit=limit, level=level
    )
    return TemplateBuildInfo.of(build, entries)


@router.get("/templates/{templateID}/builds/{buildID}/logs", responses=_ERRORS)
async def build_logs(
    template_id: TemplateId,
    build_id: BuildId,
    team: CurrentTeam,
    templates: TemplatesDep,
    cursor: Annotated[int | None, Query(ge=0, le=MAX_UNIX_MS)] = None,
    limit: Annotated[int, Query(ge=0, le=MAX_PAGE)] = MAX_PAGE,
    direction: Literal["forward", "backward"] = "forward",
    level: LogLevel | None = None,
    # Infra keeps recent logs apart from older ones; here there is one log to read.
    source: Literal["temporary", "persistent"] | None = None,
) -> TemplateBuildLogsResponse:
    entries = await templates.build_logs(
        team,
        template_id,
        build_id,
        cursor_ms=cursor,
        limit=limit,
        direction=direction,
        level=level,
    )
    return TemplateBuildLogsResponse(logs=[BuildLogEntry.of(e) for e in entries])


# --- tags ------------------------------------------------------------------------------


@router.post("/templates/tags", status_code=201, responses={**_ERRORS, **responses(413)})
async def assign_tags(
    body: AssignTemplateTagsRequest, team: CurrentTeam, templates: TemplatesDep
) -> AssignedTemplateTags:
    build_id, tags = await templates.assign_tags(team, body.target, body.tags)
    return AssignedTemplateTags(tags=tags, buildID=build_id)


@router.delete("/templates/tags", status_code=204, responses={**_ERRORS, **responses(413)})
async def remove_tags(
    body: DeleteTemplateTagsRequest, team: CurrentTeam, templates: TemplatesDep
) -> Response:
    await templates.remove_tags(team, body.name, body.tags)
    return Response(status_code=204)


@router.get("/templates/aliases/{alias}", responses=_ERRORS)
async def get_template_alias(
    alias: str, team: CurrentTeam, templates: TemplatesDep
) -> TemplateAliasResponse:
    """200 if the team may use it, 403 if it is another team's (it exists), else 404."""
    template = await templates.alias(team, alias)
    return TemplateAliasResponse(templateID=template.template_id, public=template.public)


@router.get("/templates/{templateID}/tags", responses=_ERRORS)
async def list_tags(
    template_id: TemplateId, team: CurrentTeam, templates: TemplatesDep
) -> list[TemplateTag]:
    return [TemplateTag.of(t) for t in await templates.tags(team, template_id)]


# --- read ------------------------------------------------------------------------------


@router.get("/templates", responses=_ERRORS)
async def list_templates(
    team: CurrentTeam,
    templates: TemplatesDep,
    team_id: Annotated[str | None, Query(alias="teamID")] = None,
) -> list[Template]:
    """v1: the team's and the public templates, oldest first, all at once."""
    _check_team(team.id, team_id)
    return [Template.of(t, latest) for t, latest in await templates.list_all(team)]


@router.get("/v2/templates", responses={**_ERRORS, 200: {"headers": NEXT_TOKEN}})
async def list_templates_v2(
    response: Response,
    team: CurrentTeam,
    templates: TemplatesDep,
    team_id: Annotated[str | None, Query(alias="teamID")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> list[Template]:
    _check_team(team.id, team_id)
    found = await templates.list_all(team)
    page, token = paginate(
        found, lambda f: [f[0].created_at.timestamp(), f[0].template_id], limit, next_token
    )
    if token:
        response.headers["X-Next-Token"] = token
    return [Template.of(t, latest) for t, latest in page]


@router.get("/templates/{templateID}", responses={**_ERRORS, 200: {"headers": NEXT_TOKEN}})
async def get_template(
    template_id: TemplateId,
    response: Response,
    team: CurrentTeam,
    templates: TemplatesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> TemplateWithBuilds:
    """The template with its builds, newest first, a page at a time."""
    template, builds = await templates.get(team, template_id)
    page, token = paginate(
        builds,
        lambda b: [-b.created_at.timestamp(), b.build_id],
        limit,
        next_token,
    )
    if token:
        response.headers["X-Next-Token"] = token
    latest = builds[0] if builds else None
    return TemplateWithBuilds(
        **Template.fields_of(template, latest), builds=[TemplateBuild.of(b) for b in page]
    )


# --- change ----------------------------------------------------------------------------


@router.delete("/templates/{templateID}", status_code=204, responses=_ERRORS)
async def delete_template(
    template_id: TemplateId, team: CurrentTeam, templates: TemplatesDep
) -> Response:
    await templates.delete(team, template_id)
    return Response(status_code=204)


@router.patch("/v2/templates/{templateID}", responses={**_ERRORS, **responses(413)})
async def update_template_v2(
    template_id: TemplateId,
    body: TemplateUpdateRequest,
    team: CurrentTeam,
    templates: TemplatesDep,
) -> TemplateUpdateResponse:
    template = await templates.set_public(team, template_id, body.public)
    return TemplateUpdateResponse(names=list(template.aliases))


@router.patch(
    "/templates/{templateID}",
    response_class=Response,
    responses={**_ERRORS, **responses(413), 200: {"description": "Updated"}},
)
async def update_template(
    template_id: TemplateId,
    body: TemplateUpdateRequest,
    team: CurrentTeam,
    templates: TemplatesDep,
) -> Response:
    """Deprecated: as v2, with no body in the answer."""
    await templates.set_public(team, template_id, body.public)
    return Response(status_code=200)


# --- helpers ---------------------------------------------------------------------------


def _check_team(team_id: str, asked: str | None) -> None:
    if asked is not None and asked != team_id:
        raise ApiError(400, f"teamID {asked!r} is not the team of this API key")


def _base_url(request: Request) -> str:
    """Where the client reached this API (the upload links point there); a TLS proxy in
    front says which scheme the client used."""
    base = str(request.base_url)
    scheme = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    if scheme in ("http", "https"):
        base = scheme + base[base.index(":") :]
    return base
