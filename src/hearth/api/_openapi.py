"""Hearth's OpenAPI description, served at `/openapi.json`: FastAPI's, in E2B's terms.

Routes name their bodies as E2B's spec does and list the failures they answer, each with
E2B's `Error` body (`_errors.responses`); what FastAPI adds of its own goes: a request it
cannot validate is answered 400, never its 422.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_FASTAPI_ONLY = ("HTTPValidationError", "ValidationError")


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def describe(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
            for parameter in operation.get("parameters", ()):
                parameter["schema"] = _not_null(parameter["schema"])
    schemas = spec.get("components", {}).get("schemas", {})
    for name in _FASTAPI_ONLY:
        schemas.pop(name, None)
    return spec


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without FastAPI's `| null` of an optional one: a query or
    header cannot carry a null, only be left out (as E2B's spec describes them)."""
    variants = schema.get("anyOf")
    if not variants:
        return schema
    kept = [v for v in variants if v != {"type": "null"}]
    if len(kept) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**kept[0], **rest}
