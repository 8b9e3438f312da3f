"""Every route of Hearth's `/openapi.json`, driven by schemathesis against a real
`hearth serve --runtime container` with a valid API key: its examples, its boundary
cases and generated requests, valid and not. No answer is a 5xx, every one comes (no
request hangs), and each is what the description says: a documented status, its
content type, its body's schema (E2B's `Error` for every failure) and its headers.

Generated requests rarely name a sandbox or template that exists, so a walk through the
life of real ones (a sandbox, its snapshot and fork; a template, its upload, build and
tags) checks their answers the same way, with every check.

Bounded: a fixed number of generated requests per operation and phase, so that the run
takes minutes on two CPUs. The sandboxes the requests start are killed afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from api.conftest import Hearth, served_containers
from schemathesis.config import SchemathesisConfig

from hearth.api import openapi_description

pytestmark = pytest.mark.root

MAX_EXAMPLES = 100  # per operation and phase
# Keeps a hung request from hanging the suite; no speed is asserted (a create takes
# seconds, the others milliseconds).
HANG = 300

CONFIG = {
    "cache": {"enabled": False},  # nothing kept in the work tree between runs
    # Unknown query parameters are ignored, as E2B's server ignores them: not generated.
    "generation": {
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "database": "none",
        "allow-extra-parameters": False,
    },
    "phases": {
        "examples": {"enabled": True},
        "coverage": {"enabled": True},
        # What it generates depends on nothing the server answered: a run repeats.
        "fuzzing": {
            "enabled": True,
            "extra-data-sources": {"responses": False},
            "error-feedback": {"enabled": False},
        },
        # Sequences drawn from what the server answered are not reproducible (hypothesis
        # calls them flaky): the walk below chains real resources' calls instead.
        "stateful": {"enabled": False},
    },
    "checks": {
        "not_a_server_error": {"enabled": True},
        "status_code_conformance": {"enabled": True},
        "content_type_conformance": {"enabled": True},
        "response_schema_conformance": {"enabled": True},
        "response_headers_conformance": {"enabled": True},
        "negative_data_rejection": {"enabled": True},
        "ignored_auth": {"enabled": True},
        "missing_required_header": {"enabled": True},
        "unsupported_method": {"enabled": True},
        "allow_header_conformance": {"enabled": True},
        # Valid by the schema is not valid for the server: names, ids, existing
        # templates, the team's maximum timeout are checked beyond it (400, 404).
        "positive_data_acceptance": {"enabled": False},
        # Stateful checks: they need the stateful phase.
        "use_after_free": {"enabled": False},
        "ensure_resource_availability": {"enabled": False},
    },
}


@pytest.fixture(scope="module")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-fuzz-") as info:
        yield info
        _kill_every_sandbox(info)


def _kill_every_sandbox(hearth: Hearth) -> None:
    """Kill every sandbox the requests left, running or paused, page by page, and check
    that none is left."""
    headers = {"X-API-Key": hearth.api_key}
    with httpx.Client(base_url=hearth.api_url, headers=headers, timeout=HANG) as api:
        while listed := api.get("/v2/sandboxes").json():
            for sandbox in listed:
                assert api.delete(f"/sandboxes/{sandbox['sandboxID']}").status_code in (204, 404)
        assert api.get("/v2/sandboxes").json() == []


# The description the server serves (checked below), loaded when the tests are collected:
# schemathesis makes one test of each operation.
schema = schemathesis.openapi.from_dict(
    openapi_description(), config=SchemathesisConfig.from_dict(CONFIG)
)


def test_the_server_serves_the_tested_description(hearth: Hearth) -> None:
    served = httpx.get(f"{hearth.api_url}/openapi.json")
    assert served.status_code == 200
    assert served.json() == openapi_description()


@schema.parametrize()
def test_every_route_answers_as_described(case: schemathesis.Case, hearth: Hearth) -> None:
    case.call_and_validate(
        base_url=hearth.api_url, headers={"X-API-Key": hearth.api_key}, timeout=HANG
    )


class _Walk:
    """Calls of operations of the description with given values, each answer checked
    by every check above."""

    def __init__(self, hearth: Hearth) -> None:
        self._hearth = hearth

    def __call__(
        self, method: str, path: str, status: int, *, body: Any = None, **given: Any
    ) -> Any:
        """`method path` with `at` (its path's values), `query`, `body` and the rest of
        `Case`'s values; its JSON answer, after checking it is `status`."""
        values = {"path_parameters": given.pop("at", None), "query": given.pop("query", None)}
        if body is not None:
            values["body"] = body
        case = schema[path][method].Case(**values, **given)
        response = case.call_and_validate(
            base_url=self._hearth.api_url,
            headers={"X-API-Key": self._hearth.api_key},
            timeout=HANG,
        )
        assert response.status_code == status, (method, path, response.text[:500])
        return response.json() if response.content else None


def test_real_resources_answer_as_described(hearth: Hearth) -> None:
    call = _Walk(hearth)
    marker = uuid.uuid4().hex[:12]
    created = call(
        "POST",
        "/v2/sandboxes",
        201,
        body={"templateID": "base", "timeout": 300, "metadata": {"walk": marker}},
    )
    sid = {"sandboxID": created["sandboxID"]}
    call("GET", "/sandboxes/{sandboxID}", 200, at=sid)
    listed = call("GET", "/v2/sandboxes", 200, query={"metadata": f"walk={marker}"})
    assert [s["sandboxID"] for s in listed] == [sid["sandboxID"]]
    call("GET", "/sandboxes", 200)
    call("GET", "/sandboxes/{sandboxID}/metrics", 200, at=sid)
    call("GET", "/sandboxes/{sandboxID}/logs", 200, at=sid)
    call("GET", "/v2/sandboxes/{sandboxID}/logs", 200, at=sid)
    call("POST", "/sandboxes/{sandboxID}/timeout", 204, at=sid, body={"timeout": 300})
    call("POST", "/sandboxes/{sandboxID}/refreshes", 204, at=sid, body={"duration": 60})
    call("POST", "/v2/sandboxes/{sandboxID}/connect", 200, at=sid, body={"timeout": 300})
    call("POST", "/sandboxes/{sandboxID}/connect", 200, at=sid, body={"timeout": 300})
    call("PUT", "/sandboxes/{sandboxID}/network", 204, at=sid, body={"denyOut": ["10.9.9.9"]})
    snapshot = call(
        "POST", "/sandboxes/{sandboxID}/snapshots", 201, at=sid, body={"name": f"s-{marker}"}
    )
    call("GET", "/snapshots", 200, query={"sandboxID": sid["sandboxID"]})
    forks = call("POST", "/sandboxes/{sandboxID}/fork", 201, at=sid, body={"count": 1})
    for fork in forks:
        call(
            "DELETE",
            "/sandboxes/{sandboxID}",
            204,
            at={"sandboxID": fork["sandbox"]["sandboxID"]},
        )
    call("POST", "/sandboxes/{sandboxID}/pause", 204, at=sid)
    call("GET", "/sandboxes/{sandboxID}", 200, at=sid)
    call("POST", "/sandboxes/{sandboxID}/resume", 201, at=sid, body={"timeout": 300})
    call("DELETE", "/sandboxes/{sandboxID}", 204, at=sid)
    # A snapshot is a template: deleted by its name (here without the team's namespace,
    # whose `/` a path cannot carry unencoded).
    assert snapshot["names"][0].endswith(f"/s-{marker}")
    call("DELETE", "/templates/{templateID}", 204, at={"templateID": f"s-{marker}"})

    registered = call("POST", "/v3/templates", 202, body={"name": f"t-{marker}:v1"})
    tid = {"templateID": registered["templateID"]}
    build = {**tid, "buildID": registered["buildID"]}
    link = call("GET", "/templates/{templateID}/files/{hash}", 201, at={**tid, "hash": "f" * 64})
    token = link["url"].rsplit("/", 1)[1]
    call(
        "PUT",
        "/_hearth/uploads/{token}",
        200,
        at={"token": token},
        body=b"tar",
        media_type="application/octet-stream",
    )
    call(
        "POST",
        "/v2/templates/{templateID}/builds/{buildID}",
        202,
        at=build,
        body={"fromTemplate": "base"},
    )
    for _ in range(1200):  # bounded: a build of no steps over `base` takes seconds
        status = call("GET", "/templates/{templateID}/builds/{buildID}/status", 200, at=build)
        if status["status"] in ("ready", "error"):
            break
        time.sleep(0.5)
    assert status["status"] == "ready", status
    call("GET", "/templates/{templateID}/builds/{buildID}/logs", 200, at=build)
    name = f"t-{marker}"
    call("POST", "/templates/tags", 201, body={"target": f"{name}:v1", "tags": ["extra"]})
    call("GET", "/templates/{templateID}/tags", 200, at=tid)
    call("DELETE", "/templates/tags", 204, body={"name": name, "tags": ["extra"]})
    call("GET", "/templates/aliases/{alias}", 200, at={"alias": name})
    call("GET", "/templates/{templateID}", 200, at=tid)
    call("GET", "/v2/templates", 200)
    call("GET", "/templates", 200)
    call("PATCH", "/v2/templates/{templateID}", 200, at=tid, body={"public": False})
    call("PATCH", "/templates/{templateID}", 200, at=tid, body={"public": False})
    call("DELETE", "/templates/{templateID}", 204, at=tid)
