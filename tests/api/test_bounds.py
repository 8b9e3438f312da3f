"""What a request may carry (`hearth.api._limits`, `_names`): bodies, metadata, envVars,
template names and tags, timeouts and the other numbers, bounded as E2B bounds them or
with numbers no E2B client comes near. A request past a bound is answered 400 (413 for a
body over its size) in E2B's error body, and leaves nothing: no row in the store, no
sandbox on the node. At the bounds, everything is accepted.

The server is a real `hearth serve --runtime container`, as the SDK reaches it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hearth.api._limits import (
    MAX_BODY_BYTES,
    MAX_ENV_NAME_LENGTH,
    MAX_ENV_VALUE_LENGTH,
    MAX_ENV_VARS,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_VALUE_LENGTH,
)
from hearth.api._names import MAX_PART_LENGTH, MAX_TAGS
from hearth.serve import ServerThread

from .conftest import Hearth, serve_containers

pytestmark = pytest.mark.root


@dataclass(frozen=True)
class Served:
    server: ServerThread
    hearth: Hearth
    data_dir: Path

    def sandbox_rows(self) -> int:
        """Every sandbox the store has ever recorded, killed ones too."""
        with contextlib.closing(sqlite3.connect(self.data_dir / "hearth.db")) as db:
            return db.execute("SELECT count(*) FROM sandboxes").fetchone()[0]

    def template_rows(self) -> int:
        with contextlib.closing(sqlite3.connect(self.data_dir / "hearth.db")) as db:
            return db.execute("SELECT count(*) FROM templates").fetchone()[0]

    def on_node(self) -> set[str]:
        """The sandboxes the node runs or holds, whatever the store says."""
        assert self.server.running is not None
        node = self.server.running.app.state.node  # type: ignore[attr-defined]
        return set(self.server.call(node.running())) | set(self.server.call(node.paused()))


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    if os.geteuid() != 0:
        pytest.skip("needs root: container sandboxes")
    data = Path(tempfile.mkdtemp(prefix="hearth-bounds-", dir="/var/tmp"))
    data.chmod(0o755)  # the runtime's unprivileged ids search every parent
    server, hearth = serve_containers(data)
    try:
        yield Served(server, hearth, data)
        with httpx.Client(base_url=hearth.api_url, headers={"X-API-Key": hearth.api_key}) as api:
            for sandbox in api.get("/v2/sandboxes").json():
                api.delete(f"/sandboxes/{sandbox['sandboxID']}")
    finally:
        assert server.stop(), "hearth serve did not stop"
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def api(served: Served) -> Iterator[httpx.Client]:
    headers = {"X-API-Key": served.hearth.api_key}
    with httpx.Client(base_url=served.hearth.api_url, headers=headers, timeout=120) as client:
        yield client


@contextlib.contextmanager
def nothing_created(served: Served) -> Iterator[None]:
    """The block leaves the store's sandboxes and templates and the node's as they were."""
    rows, templates, node = served.sandbox_rows(), served.template_rows(), served.on_node()
    yield
    assert served.sandbox_rows() == rows
    assert served.template_rows() == templates
    assert served.on_node() == node


def _error(response: httpx.Response, status: int) -> str:
    """The E2B error body's message, after checking the status and shape."""
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == status
    return body["message"]


def _create(api: httpx.Client, **fields: object) -> httpx.Response:
    return api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60, **fields})


def test_ten_megabytes_of_metadata_is_too_large(api: httpx.Client, served: Served) -> None:
    metadata = {f"k{i}": "v" * 1000 for i in range(10_000)}
    with nothing_created(served):
        says = _error(_create(api, metadata=metadata), 413)
    assert str(MAX_BODY_BYTES) in says


def test_a_body_without_a_length_is_bounded_as_it_arrives(
    api: httpx.Client, served: Served
) -> None:
    def body() -> Iterator[bytes]:  # chunked: no Content-Length to refuse it by
        yield b'{"templateID": "base", "metadata": {"a": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):  # just over: the rest fits in buffers
            yield b"x" * 65536
        yield b'"}}'

    with nothing_created(served):
        response = api.post(
            "/v2/sandboxes", content=body(), headers={"Content-Type": "application/json"}
        )
        _error(response, 413)


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ({f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES + 1)}, "at most 100 items"),
        ({"k" * (MAX_METADATA_KEY_LENGTH + 1): "v"}, "at most 256 characters"),
        ({"k": "v" * (MAX_METADATA_VALUE_LENGTH + 1)}, "at most 4096 characters"),
        ({"k": "nul\x00"}, "NUL"),
        ({"nul\x00": "v"}, "NUL"),
    ],
)
def test_metadata_past_its_bounds(
    api: httpx.Client, served: Served, metadata: dict, says: str
) -> None:
    with nothing_created(served):
        assert says in _error(_create(api, metadata=metadata), 400)
        assert says in _error(
            api.post("/sandboxes", json={"templateID": "base", "metadata": metadata}), 400
        )


@pytest.mark.parametrize(
    ("env_vars", "says"),
    [
        ({f"V{i}": "1" for i in range(MAX_ENV_VARS + 1)}, "at most 1000 items"),
        ({"V" * (MAX_ENV_NAME_LENGTH + 1): "1"}, "at most 1024 characters"),
        ({"V": "1" * (MAX_ENV_VALUE_LENGTH + 1)}, "at most 65536 characters"),
        ({"A=B": "1"}, "pattern"),
        ({"": "1"}, "at least 1 character"),
    ],
)
def test_env_vars_past_their_bounds(
    api: httpx.Client, served: Served, env_vars: dict, says: str
) -> None:
    with nothing_created(served):
        assert says in _error(_create(api, envVars=env_vars), 400)


def test_everything_at_its_bounds_is_accepted(api: httpx.Client, served: Served) -> None:
    marker = uuid.uuid4().hex
    metadata = {
        f"{i:03d}".ljust(MAX_METADATA_KEY_LENGTH, "k"): marker.ljust(MAX_METADATA_VALUE_LENGTH)
        for i in range(MAX_METADATA_ENTRIES)
    }
    env_vars = {"BIG": "x" * MAX_ENV_VALUE_LENGTH, "N" * MAX_ENV_NAME_LENGTH: "1"}
    created = _create(api, metadata=metadata, envVars=env_vars)
    assert created.status_code == 201, created.text[:500]
    sandbox_id = created.json()["sandboxID"]
    try:
        assert sandbox_id in served.on_node()
        assert api.get(f"/sandboxes/{sandbox_id}").json()["metadata"] == metadata
    finally:
        assert api.delete(f"/sandboxes/{sandbox_id}").status_code == 204


@pytest.mark.parametrize("timeout", [-1, 2**31, 10**30])
def test_timeouts_are_int32_seconds(api: httpx.Client, served: Served, timeout: int) -> None:
    with nothing_created(served):
        _error(_create(api, timeout=timeout), 400)
        # Checked before the sandbox is looked for: the same 400 for one that is not there.
        unknown = "a" * 20
        _error(api.post(f"/sandboxes/{unknown}/timeout", json={"timeout": timeout}), 400)
        _error(api.post(f"/v2/sandboxes/{unknown}/connect", json={"timeout": timeout}), 400)
        _error(api.post(f"/sandboxes/{unknown}/resume", json={"timeout": timeout}), 400)
        _error(api.post(f"/sandboxes/{unknown}/fork", json={"timeout": timeout}), 400)


def test_template_names_and_tags_past_their_bounds(api: httpx.Client, served: Served) -> None:
    long = "a" * (MAX_PART_LENGTH + 1)
    with nothing_created(served):
        assert "longer than 128" in _error(api.post("/v3/templates", json={"name": long}), 400)
        says = _error(api.post("/v3/templates", json={"name": f"ok:{long}"}), 400)
        assert "longer than 128" in says
        says = _error(api.post("/v3/templates", json={"name": "ok", "tags": [long]}), 400)
        assert "longer than 128" in says
        tags = [f"t{i}" for i in range(MAX_TAGS + 1)]
        _error(api.post("/v3/templates", json={"name": "ok", "tags": tags}), 400)
        _error(api.post("/templates/tags", json={"target": "base", "tags": tags}), 400)
        _error(api.post("/v3/templates", json={"name": "ok", "minFreeDiskMb": 2**40}), 400)
        _error(api.post("/v3/templates", json={"name": "ok", "cpuCount": 2**31}), 400)
        _error(_create(api, templateID=long), 400)
        # The error repeats a bounded part of what it refuses.
        assert len(_error(_create(api, templateID="a" * 100_000), 400)) < 1000


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/sandboxes/{id}/logs", {"start": 10**18}),
        ("/v2/sandboxes/{id}/logs", {"cursor": -1}),
        ("/templates/base/builds/{build}/status", {"logsOffset": 2**40}),
        ("/templates/base/builds/{build}/logs", {"cursor": 10**30}),
    ],
)
def test_numbers_in_queries_are_bounded(
    api: httpx.Client, path: str, params: dict[str, int]
) -> None:
    url = path.format(id="a" * 20, build=uuid.uuid4())
    _error(api.get(url, params=params), 400)


def test_nul_characters_are_refused_everywhere(api: httpx.Client, served: Served) -> None:
    with nothing_created(served):
        _error(api.get("/sandboxes/abc%00def"), 400)
        _error(api.get("/v2/sandboxes", params={"template": "a\x00"}), 400)
        # Encoded once more, as the SDKs encode the filter: its decoding finds the NUL.
        _error(api.get("/v2/sandboxes", params={"metadata": "a=%00"}), 400)
        _error(_create(api, templateID="base\u0000"), 400)
        _error(api.post("/v3/templates", json={"name": "x", "alias": "\u0000"}), 400)
        # An escaped backslash before `u0000` is text, not a NUL.
        text = api.post("/v3/templates", json={"name": "not valid\\u0000"})
        assert "Invalid name" in _error(text, 400)


def test_made_up_cursors_are_a_400(api: httpx.Client) -> None:
    deep = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode()
    for path in ("/v2/templates", "/snapshots", "/templates/base"):
        assert "nextToken" in _error(api.get(path, params={"nextToken": deep}), 400)
    nul = base64.urlsafe_b64encode(b"2024-01-01T00:00:00Z__a\x00b").decode()
    _error(api.get("/v2/sandboxes", params={"nextToken": nul}), 400)
    old = base64.urlsafe_b64encode(b"0001-01-01T00:00:00+05:00__abc").decode()
    _error(api.get("/v2/sandboxes", params={"nextToken": old}), 400)


def test_the_description_states_the_bounds(served: Served) -> None:
    spec = httpx.get(f"{served.hearth.api_url}/openapi.json").json()
    new = spec["components"]["schemas"]["NewSandboxV2"]["properties"]
    metadata = next(s for s in new["metadata"]["anyOf"] if s.get("type") == "object")
    assert metadata["maxProperties"] == MAX_METADATA_ENTRIES
    assert metadata["propertyNames"]["maxLength"] == MAX_METADATA_KEY_LENGTH
    env_vars = next(s for s in new["envVars"]["anyOf"] if s.get("type") == "object")
    assert env_vars["maxProperties"] == MAX_ENV_VARS
    create = spec["paths"]["/v2/sandboxes"]["post"]["responses"]
    assert create["413"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
