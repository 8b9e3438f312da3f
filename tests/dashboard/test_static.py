"""The dashboard's files as the API's app serves them, without a browser: their content
types and security headers, the redirect from `/`, E2B's 404 for what is not there, and
no way out of the static folder."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hearth.api import _errors
from hearth.dashboard import DASHBOARD_PATH, mount
from hearth.dashboard._mount import STATIC_DIR

JAVASCRIPT = re.compile(r"^(text|application)/javascript\b")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(_app(), follow_redirects=False) as client:
        yield client


def test_the_root_redirects_to_the_dashboard(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == f"{DASHBOARD_PATH}/"
    slashless = client.get(DASHBOARD_PATH)
    assert slashless.status_code in (307, 308)
    assert slashless.headers["location"].endswith(f"{DASHBOARD_PATH}/")


def test_the_page_and_its_headers(client: TestClient) -> None:
    response = client.get(f"{DASHBOARD_PATH}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    # The import map is the one inline script, allowed by its hash and nothing wider.
    script_src = re.search(r"script-src ([^;]+)", policy)
    assert script_src is not None
    sources = script_src.group(1).split()
    assert sources[0] == "'self'" and len(sources) == 2 and sources[1].startswith("'sha256-")
    assert "'unsafe-inline'" not in script_src.group(1)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("app.js", JAVASCRIPT),
        ("sandboxes.js", JAVASCRIPT),
        ("vendor/preact.js", JAVASCRIPT),
        ("vendor/uplot.js", JAVASCRIPT),
        ("style.css", re.compile(r"^text/css\b")),
        ("vendor/uplot.css", re.compile(r"^text/css\b")),
        ("vendor/licenses/preact.txt", re.compile(r"^text/plain\b")),
    ],
)
def test_content_types(client: TestClient, path: str, kind: re.Pattern[str]) -> None:
    response = client.get(f"{DASHBOARD_PATH}/{path}")
    assert response.status_code == 200, path
    assert kind.match(response.headers["content-type"]), response.headers["content-type"]
    assert response.content == (STATIC_DIR / path).read_bytes()
    assert "content-security-policy" in response.headers


def test_every_module_the_page_imports_is_there(client: TestClient) -> None:
    """Each relative import of the front end's modules, and the import map's targets,
    resolve to a file the server serves (a missing one is a blank page)."""
    index = client.get(f"{DASHBOARD_PATH}/").text
    wanted = set(re.findall(r'"\./(vendor/[^"]+)"', index))
    for module in STATIC_DIR.glob("*.js"):
        wanted |= set(re.findall(r'from "\./([^"]+)"', module.read_text()))
    assert {"vendor/preact.js", "vendor/htm.js", "api.js", "chart.js"} <= wanted
    for path in sorted(wanted):
        assert client.get(f"{DASHBOARD_PATH}/{path}").status_code == 200, path


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_the_files_are_only_read(client: TestClient, method: str) -> None:
    response = client.request(method, f"{DASHBOARD_PATH}/app.js")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json() == {"code": 405, "message": "Method Not Allowed"}
    assert client.head(f"{DASHBOARD_PATH}/app.js").status_code == 200


def test_no_file_holds_a_key() -> None:
    """What the server hands every visitor carries no credential: the key is the user's."""
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            assert not re.search(r"e2b_[0-9a-f]{40}", path.read_text()), path


@pytest.mark.parametrize("path", ["nothing.js", "vendor/", "vendor/nothing.css", "app.js/x"])
def test_unknown_files_are_e2b_404s(client: TestClient, path: str) -> None:
    response = client.get(f"{DASHBOARD_PATH}/{path}")
    assert response.status_code == 404
    assert response.json() == {"code": 404, "message": "Not Found"}


@pytest.mark.parametrize(
    "raw",
    [
        "/dashboard/../_mount.py",
        "/dashboard/%2e%2e/_mount.py",
        "/dashboard/..%2f_mount.py",
        "/dashboard/vendor/..%2f..%2f__init__.py",
        "/dashboard/%2e%2e%2f%2e%2e%2fapi%2f_app.py",
        "/dashboard//etc/passwd",
        "/dashboard/%2fetc%2fpasswd",
    ],
)
async def test_no_way_out_of_the_static_folder(raw: str) -> None:
    # Straight to the app as a server hands it a request line (decoded, dots and all):
    # an HTTP client would have normalised the dots away.
    status, body = await _get(_app(), raw)
    assert status == 404, (raw, body[:200])
    assert b"import" not in body and b"root:" not in body


def _app() -> FastAPI:
    app = FastAPI()
    _errors.install(app)
    mount(app)
    return app


async def _get(app: FastAPI, raw: str) -> tuple[int, bytes]:
    """The status and body of `GET raw` through `app`'s ASGI interface."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(raw),
        "raw_path": raw.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 40000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(
        m.get("body", b"") for m in sent if m["type"] == "http.response.body"
    )
