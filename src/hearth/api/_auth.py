"""Who is calling: the team of the `X-API-Key` header (the only credential the SDKs send)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from hearth.api._errors import ApiError
from hearth.store import Store, Team, is_api_key

INVALID_KEY = "Invalid API key, please visit https://e2b.dev/docs/api-key for more information."
# E2B's security scheme, by its name there; a missing key is answered below, in E2B's body.
_API_KEY = APIKeyHeader(name="X-API-Key", scheme_name="ApiKeyAuth", auto_error=False)


async def current_team(
    request: Request, x_api_key: Annotated[str | None, Depends(_API_KEY)] = None
) -> Team:
    if not x_api_key:
        raise ApiError(401, INVALID_KEY)
    if not is_api_key(x_api_key):
        raise ApiError(401, "Invalid API key format")
    store: Store = request.app.state.store
    team = await store.team_for_api_key(x_api_key)
    if team is None:
        raise ApiError(401, INVALID_KEY)
    return team


CurrentTeam = Annotated[Team, Depends(current_team)]
