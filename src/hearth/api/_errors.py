"""Every error the API answers, in E2B's shape: `{"code": <status>, "message": "..."}`.

One place maps exceptions to responses. `Should-Retry` tells the Python SDK (≥ 2.50,
which otherwise retries 429/502/503/504 and even creates) whether repeating the request
can succeed: `false` on everything a retry would only repeat.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than success; `retry` is the `Should-Retry` header's value."""

    def __init__(self, status: int, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry = retry


def sandbox_not_found(sandbox_id: str) -> ApiError:
    return ApiError(404, f"Sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it")


def error_response(status: int, message: str, *, retry: bool = False) -> JSONResponse:
    return JSONResponse(
        {"code": status, "message": message},
        status_code=status,
        headers={"Should-Retry": "true" if retry else "false"},
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, retry=exc.retry)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, _describe(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "Internal server error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def _describe(exc: RequestValidationError) -> str:
    """One line naming each offending field the way the client spelled it."""
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
        message = error.get("msg", "invalid value")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "invalid request"
