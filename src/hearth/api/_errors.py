"""Every error the API answers, in E2B's shape: `{"code": <status>, "message": "..."}`.

One place maps exceptions to responses. `Should-Retry` tells the Python SDK (≥ 2.50,
which otherwise retries 429/502/503/504 and even creates) whether repeating the request
can succeed: `false` on everything a retry would only repeat.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
_SHOWN = 64  # characters of a client's text that an error message repeats
_LISTED = 10  # and how many of the errors of one request


class Error(BaseModel):
    """E2B's error body (its OpenAPI `Error`): the status again, and what went wrong."""

    code: int
    message: str


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of the failures a route answers, each with E2B's body."""
    return {s: {"model": Error, "description": HTTPStatus(s).phrase} for s in statuses}


class ApiError(Exception):
    """An answer other than success; `retry` is the `Should-Retry` header's value."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retry: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry = retry
        self.headers = dict(headers or {})


def sandbox_not_found(sandbox_id: str) -> ApiError:
    return ApiError(404, f"Sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it")


def error_response(
    status: int, message: str, *, retry: bool = False, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"code": status, "message": message},
        status_code=status,
        headers={**(headers or {}), "Should-Retry": "true" if retry else "false"},
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, retry=exc.retry, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, _describe(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette's names the methods of the first route of the path; there may be more.
        # A mounted app (the dashboard's files) has no methods here and names its own.
        allowed = _allowed(request)
        if allowed or "Allow" not in headers:
            headers["Allow"] = ", ".join(sorted(allowed))
    return error_response(exc.status_code, str(exc.detail), headers=headers)


def _allowed(request: Request) -> set[str]:
    """The methods of the request's path as the description has it: those of every route
    of the path template that the first route matching the path has (`/templates/tags`
    is also a `/templates/{templateID}`, but is described as itself)."""
    path = request.scope["path"]  # the app is served at the root
    template, methods = None, set()
    # Included routers are routes of their own here: their routes' contexts (each with
    # its full path) are what match a path.
    for route in iter_route_contexts(request.app.router.routes):
        regex = getattr(route, "path_regex", None)
        if regex is None or not regex.match(path):
            continue
        template = template or route.path_format
        if route.path_format == template:
            methods |= set(route.methods or ())
    return methods


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "Internal server error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def _describe(exc: RequestValidationError) -> str:
    """One line naming each offending field the way the client spelled it (the first
    few of them)."""
    errors = exc.errors()
    parts = []
    for error in errors[:_LISTED]:
        location = ".".join(
            shown(str(p)) for p in error.get("loc", ()) if p not in ("body", "query")
        )
        message = error.get("msg", "invalid value")
        parts.append(f"{location}: {message}" if location else message)
    if len(errors) > _LISTED:
        parts.append(f"and {len(errors) - _LISTED} more")
    return "; ".join(parts) or "invalid request"


def shown(text: str, limit: int = _SHOWN) -> str:
    """`text` as an error message repeats what a client sent: its first `limit`
    characters (a name or a key may be a megabyte long)."""
    return text if len(text) <= limit else text[:limit] + "..."
