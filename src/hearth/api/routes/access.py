"""Who may call: the caller's team and its API keys (spec §2.2 rows 2 and 54–57, §2.6),
the routes E2B's dashboard and CLI use. A team sees only itself and its own keys; a key
of another team is not found (404). Keys are kept hashed, so a listing shows their ends,
and the one place a whole key appears is the answer that creates it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, StringConstraints

from hearth.api._auth import CurrentCaller
from hearth.api._deps import StoreDep
from hearth.api._errors import ApiError, responses
from hearth.api._limits import RequestBody
from hearth.store import DEFAULT_TEAM, ApiKey
from hearth.store._keys import API_KEY_PREFIX

router = APIRouter(responses=responses(400, 401, 500))

KeyName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00]*$")]
ApiKeyId = Annotated[str, Path(alias="apiKeyID", max_length=64)]


class TeamInfo(BaseModel):
    """E2B's `Team`; `apiKey` is the key the caller sent (the only one Hearth can show)."""

    teamID: str
    name: str
    apiKey: str
    isDefault: bool


class IdentifierMaskingDetails(BaseModel):
    prefix: str
    valueLength: int
    maskedValuePrefix: str
    maskedValueSuffix: str


class TeamAPIKey(BaseModel):
    id: str
    name: str
    mask: IdentifierMaskingDetails
    createdAt: datetime
    lastUsed: datetime | None = None

    @classmethod
    def of(cls, key: ApiKey) -> TeamAPIKey:
        return cls(
            id=key.id,
            name=key.name,
            mask=IdentifierMaskingDetails(
                prefix=API_KEY_PREFIX,
                valueLength=40,  # the hex digits after the prefix (`_keys.new_api_key`)
                maskedValuePrefix=key.prefix.removeprefix(API_KEY_PREFIX),
                maskedValueSuffix=key.suffix,
            ),
            createdAt=key.created_at,
            lastUsed=key.last_used_at,
        )


class CreatedTeamAPIKey(TeamAPIKey):
    key: str


class NewTeamAPIKey(RequestBody):
    name: KeyName


class UpdateTeamAPIKey(RequestBody):
    name: KeyName


@router.get("/teams")
async def list_teams(caller: CurrentCaller) -> list[TeamInfo]:
    team = caller.team
    return [
        TeamInfo(
            teamID=team.id,
            name=team.name,
            apiKey=caller.api_key,
            isDefault=team.name == DEFAULT_TEAM,
        )
    ]


@router.get("/api-keys")
async def list_api_keys(caller: CurrentCaller, store: StoreDep) -> list[TeamAPIKey]:
    return [TeamAPIKey.of(k) for k in await store.list_api_keys(caller.team.id)]


@router.post("/api-keys", status_code=201)
async def create_api_key(
    body: NewTeamAPIKey, caller: CurrentCaller, store: StoreDep
) -> CreatedTeamAPIKey:
    key, record = await store.create_api_key(caller.team.id, body.name)
    return CreatedTeamAPIKey(**TeamAPIKey.of(record).model_dump(), key=key)


@router.patch("/api-keys/{apiKeyID}", responses=responses(404))
async def update_api_key(
    key_id: ApiKeyId, body: UpdateTeamAPIKey, caller: CurrentCaller, store: StoreDep
) -> Response:
    if not await store.rename_api_key(caller.team.id, key_id, body.name):
        raise _key_not_found(key_id)
    return Response(status_code=200)


@router.delete("/api-keys/{apiKeyID}", status_code=204, responses=responses(404))
async def delete_api_key(key_id: ApiKeyId, caller: CurrentCaller, store: StoreDep) -> Response:
    if not await store.revoke_api_key(caller.team.id, key_id):
        raise _key_not_found(key_id)
    return Response(status_code=204)


def _key_not_found(key_id: str) -> ApiError:
    return ApiError(404, f"API key '{key_id}' not found")
