"""Who is calling: the team of the `X-API-Key` header (the only credential the SDKs send)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from hearth.api._errors import ApiError
from hearth.store import Store, Team, is_api_key

INVALID_KEY = "Invalid API key, please visit https://e2b.dev/docs/api-key for more information."
# E2B's security scheme, by its name there; a missing key is answered below, in E2B's body.
_API_KEY = APIKeyHeader(name="X-API-Key", scheme_name="ApiKeyAuth", auto_error=False)


async def current_team(
    request: Request, x_api_key: Annotated[str | None, Depends(_API_KEY)] = None
) -> Team:
    return await _team_of(request, x_api_key)


async def _team_of(request: Request, key: str | None) -> Team:
    if not key:
        raise ApiError(401, INVALID_KEY)
    if not is_api_key(key):
        raise ApiError(401, "Invalid API key format")
    store: Store = request.app.state.store
    team = await store.team_for_api_key(key)
    if team is None:
        raise ApiError(401, INVALID_KEY)
    return team


CurrentTeam = Annotated[Team, Depends(current_team)]

# The dashboard's and the CLI's team routes send a bearer token (E2B's user JWT, or an
# access token); Hearth's credential there is an API key too, in either header.
_BEARER = HTTPBearer(scheme_name="AccessTokenAuth", auto_error=False)


@dataclass(frozen=True)
class Caller:
    team: Team
    api_key: str


async def current_caller(
    request: Request,
    x_api_key: Annotated[str | None, Depends(_API_KEY)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None,
) -> Caller:
    key = x_api_key or (bearer.credentials if bearer else None)
    return Caller(await _team_of(request, key), key or "")


CurrentCaller = Annotated[Caller, Depends(current_caller)]
