"""The REST API and the gateway on the wire: status codes, error bodies and headers the
SDKs and infra's integration tests depend on (spec §1.5, §1.7, §2.3, §7)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from e2b import Sandbox, Template

from .conftest import Hearth

pytestmark = pytest.mark.root


@pytest.fixture
def api(hearth: Hearth) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hearth.api_url, headers={"X-API-Key": hearth.api_key}) as client:
        yield client


@pytest.fixture
def created(api: httpx.Client) -> Iterator[dict]:
    response = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 120})
    assert response.status_code == 201, response.text
    body = response.json()
    yield body
    api.delete(f"/sandboxes/{body['sandboxID']}")


def _error(response: httpx.Response, status: int) -> str:
    """The E2B error body's message, after checking the status, shape and retry header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == status
    assert response.headers["Should-Retry"] == "false"
    return body["message"]


def test_health(hearth: Hearth) -> None:
    response = httpx.get(f"{hearth.api_url}/health")
    assert (response.status_code, response.text) == (200, "Health check successful")


def test_create_answer_has_every_field(created: dict, hearth: Hearth) -> None:
    assert set(created) == {
        "sandboxID",
        "templateID",
        "alias",
        "clientID",
        "envdVersion",
        "envdAccessToken",
        "trafficAccessToken",
        "domain",
    }
    assert created["templateID"] == "base" and created["alias"] == "base"
    assert created["envdVersion"] == "0.6.13"
    assert created["envdAccessToken"]  # v2 is always secured
    assert created["trafficAccessToken"] is None
    assert created["domain"] == hearth.domain


def test_v1_create_and_connect(api: httpx.Client) -> None:
    response = api.post("/sandboxes", json={"templateID": "base", "timeout": 60})
    assert response.status_code == 201, response.text
    sandbox = response.json()
    try:
        assert sandbox["envdAccessToken"] is None  # v1 secures only when asked
        sandbox_id = sandbox["sandboxID"]
        connected = api.post(f"/sandboxes/{sandbox_id}/connect", json={"timeout": 120})
        assert connected.status_code == 200, connected.text
        assert connected.json()["sandboxID"] == sandbox_id
        assert _error(api.post(f"/sandboxes/{sandbox_id}/connect", json={}), 400)
    finally:
        assert api.delete(f"/sandboxes/{sandbox['sandboxID']}").status_code == 204


def test_timeout_and_refresh(api: httpx.Client, created: dict) -> None:
    sandbox_id = created["sandboxID"]

    def end() -> str:
        return api.get(f"/sandboxes/{sandbox_id}").json()["endAt"]

    first = end()
    assert api.post(f"/sandboxes/{sandbox_id}/refreshes", json={"duration": 1}).status_code == 204
    assert end() == first  # refresh only extends
    assert api.post(f"/sandboxes/{sandbox_id}/refreshes", json={"duration": 600}).status_code == 204
    extended = end()
    assert extended > first
    assert api.post(f"/sandboxes/{sandbox_id}/timeout", json={"timeout": 200}).status_code == 204
    assert end() < extended  # timeout may shorten
    _error(api.post(f"/sandboxes/{sandbox_id}/refreshes", json={"duration": 3601}), 400)
    _error(api.post(f"/sandboxes/{sandbox_id}/timeout", json={"timeout": -1}), 400)


def test_detail_metrics_and_logs(api: httpx.Client, created: dict) -> None:
    sandbox_id = created["sandboxID"]
    detail = api.get(f"/sandboxes/{sandbox_id}").json()
    for field in ("templateID", "sandboxID", "clientID", "startedAt", "endAt", "envdVersion"):
        assert field in detail
    assert detail["state"] == "running"
    assert detail["envdAccessToken"] == created["envdAccessToken"]
    assert detail["lifecycle"] == {"autoResume": False, "onTimeout": "kill"}

    # Their fields and values: tests/api/test_metrics.py.
    (metric,) = api.get(f"/sandboxes/{sandbox_id}/metrics").json()
    assert metric["memTotal"] > 0 and metric["diskTotal"] > 0
    metrics = Sandbox.get_metrics(sandbox_id)
    assert metrics and metrics[0].mem_total > 0

    logs = api.get(f"/sandboxes/{sandbox_id}/logs").json()
    assert set(logs) == {"logs", "logEntries"}
    assert any("sandbox.created" in line["line"] for line in logs["logs"])
    assert all(set(e) == {"timestamp", "message", "level", "fields"} for e in logs["logEntries"])
    assert set(api.get(f"/v2/sandboxes/{sandbox_id}/logs").json()) == {"logs"}


def test_idempotency_key(api: httpx.Client) -> None:
    headers = {"Idempotency-Key": "create-once-1"}
    first = api.post("/v2/sandboxes", json={"templateID": "base"}, headers=headers)
    second = api.post("/v2/sandboxes", json={"templateID": "base"}, headers=headers)
    try:
        assert first.status_code == second.status_code == 201
        assert first.json()["sandboxID"] == second.json()["sandboxID"]
    finally:
        api.delete(f"/sandboxes/{first.json()['sandboxID']}")
    bad = {"Idempotency-Key": "Not Valid!"}
    _error(api.post("/v2/sandboxes", json={"templateID": "base"}, headers=bad), 400)


def test_templates(api: httpx.Client, hearth: Hearth) -> None:
    templates = api.get("/templates").json()
    base = next(t for t in templates if t["templateID"] == "base")
    assert base["aliases"] == ["base"] and base["buildStatus"] == "ready"
    assert api.get("/templates/aliases/base").json() == {"templateID": "base", "public": True}
    _error(api.get("/templates/aliases/nothing-here"), 404)
    _error(api.get("/templates", params={"teamID": "someone-else"}), 400)
    assert Template.exists("base") is True
    assert Template.exists("nothing-here") is False


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "templateID"),
        ({"templateID": "base", "timeout": 0}, "Timeout must be greater than 0"),
        ({"templateID": "base", "timeout": 10**9}, "Timeout cannot be greater than"),
        ({"templateID": "base", "metadata": {"a": 1}}, "metadata"),
        ({"templateID": "base", "autoPauseMemory": False}, "autoPause"),
        (
            {"templateID": "base", "secure": False, "network": {"allowPublicTraffic": False}},
            "without public access",
        ),
        ({"templateID": "base", "network": {"maskRequestHost": "-https://abcd"}}, "mask"),
    ],
)
def test_create_rejects_bad_input(api: httpx.Client, body: dict, fragment: str) -> None:
    # v1 carries `secure`, so the public-traffic rule is reachable there.
    assert fragment in _error(api.post("/sandboxes", json=body), 400)


def test_errors_of_the_api(api: httpx.Client, hearth: Hearth) -> None:
    _error(api.post("/v2/sandboxes", json={"templateID": "no-such-template"}), 404)
    _error(
        api.post(
            "/v2/sandboxes", content=b"{not json", headers={"Content-Type": "application/json"}
        ),
        400,
    )
    message = _error(api.get("/sandboxes/abcdefghij0123456789"), 404)
    assert (
        message == "Sandbox \"abcdefghij0123456789\" doesn't exist or you don't have access to it"
    )
    _error(api.delete("/sandboxes/abcdefghij0123456789"), 404)
    _error(api.post("/sandboxes/abcdefghij0123456789/timeout", json={"timeout": 5}), 404)
    _error(api.post("/v2/sandboxes/abcdefghij0123456789/connect"), 404)
    _error(api.get("/v2/sandboxes", params={"limit": 0}), 400)
    _error(api.get("/v2/sandboxes", params={"limit": 101}), 400)
    _error(api.get("/v2/sandboxes", params={"nextToken": "garbage"}), 400)
    _error(api.get("/v2/sandboxes", params={"state": "sleeping"}), 400)
    _error(api.get("/v2/sandboxes", params={"metadata": "novalue"}), 400)
    _error(api.get("/v2/sandboxes", params={"startedAfter": "yesterday"}), 400)
    _error(api.get("/no/such/route"), 404)
    _error(httpx.get(f"{hearth.api_url}/v2/sandboxes"), 401)
    _error(httpx.get(f"{hearth.api_url}/v2/sandboxes", headers={"X-API-Key": "nope"}), 401)


def test_a_wrong_method_is_told_the_paths_own(api: httpx.Client) -> None:
    """405 with `Allow` naming the methods the description has for the path, through
    the included routers, and for `/templates/tags` its own, not `/templates/{id}`'s."""
    for method, path, allowed in [
        ("OPTIONS", "/api-keys", "GET, POST"),
        ("PUT", "/templates/tags", "DELETE, POST"),
        ("PUT", "/templates/some-template", "DELETE, GET, PATCH"),
    ]:
        response = api.request(method, path)
        _error(response, 405)
        assert response.headers["allow"] == allowed, path


# --- the gateway -----------------------------------------------------------------------


def _envd(hearth: Hearth, sandbox_id: str, port: int = 49983) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(port)}


def test_gateway_routing_errors(hearth: Hearth, created: dict) -> None:
    url = hearth.sandbox_url
    sandbox_id = created["sandboxID"]
    assert httpx.get(f"{url}/health", headers=_envd(hearth, sandbox_id)).status_code == 204

    missing = httpx.get(f"{url}/health", headers={"E2b-Sandbox-Id": sandbox_id})
    assert (missing.status_code, missing.text) == (400, "missing header\n")
    bad_port = httpx.get(
        f"{url}/health", headers={**_envd(hearth, sandbox_id), "E2b-Sandbox-Port": "x"}
    )
    assert (bad_port.status_code, bad_port.text) == (400, "Invalid sandbox port\n")
    bad_id = httpx.get(f"{url}/health", headers=_envd(hearth, "Not-An-Id"))
    assert (bad_id.status_code, bad_id.text) == (400, "Invalid sandbox ID\n")

    unknown = httpx.get(f"{url}/health", headers=_envd(hearth, "abcdefghij0123456789"))
    assert unknown.status_code == 502
    assert unknown.headers["content-type"] == "application/json; charset=utf-8"
    assert unknown.json() == {
        "sandboxId": "abcdefghij0123456789",
        "message": "The sandbox was not found",
        "code": 502,
    }
    browser = httpx.get(
        f"{url}/health",
        headers={**_envd(hearth, "abcdefghij0123456789"), "User-Agent": "Mozilla/5.0"},
    )
    assert browser.status_code == 502 and browser.text.startswith("<html")
    assert "Sandbox Not Found" in browser.text

    closed = httpx.get(f"{url}/", headers=_envd(hearth, sandbox_id, 8080))
    assert closed.status_code == 502
    assert closed.json() == {
        "sandboxId": sandbox_id,
        "message": "The sandbox is running but port is not open",
        "port": 8080,
        "code": 502,
    }

    for path in ("/init", "/freeze", "/upgrade"):
        reserved = httpx.post(f"{url}{path}", headers=_envd(hearth, sandbox_id), json={})
        assert reserved.status_code == 404
        assert "reserved for the E2B control plane" in reserved.text


def test_gateway_host_routing(hearth: Hearth, created: dict) -> None:
    host = f"49983-{created['sandboxID']}.{hearth.domain}"
    response = httpx.get(f"{hearth.sandbox_url}/health", headers={"Host": host})
    assert response.status_code == 204
    # Extra labels after the id are ignored, as infra does (`49983-<id>-<client>`).
    host = f"49983-{created['sandboxID']}-00000000.{hearth.domain}"
    assert httpx.get(f"{hearth.sandbox_url}/health", headers={"Host": host}).status_code == 204


def test_traffic_access_token(api: httpx.Client, hearth: Hearth) -> None:
    response = api.post(
        "/v2/sandboxes", json={"templateID": "base", "network": {"allowPublicTraffic": False}}
    )
    assert response.status_code == 201, response.text
    sandbox = response.json()
    try:
        token = sandbox["trafficAccessToken"]
        assert token
        headers = _envd(hearth, sandbox["sandboxID"], 8080)
        url = f"{hearth.sandbox_url}/"
        missing = httpx.get(url, headers=headers)
        assert missing.status_code == 403
        assert missing.json()["message"] == (
            "Sandbox is secured with traffic access token."
            " Token header 'e2b-traffic-access-token' is missing"
        )
        wrong = httpx.get(url, headers={**headers, "e2b-traffic-access-token": "wrong"})
        assert wrong.status_code == 403 and "is invalid" in wrong.json()["message"]
        right = httpx.get(url, headers={**headers, "e2b-traffic-access-token": token})
        assert right.status_code == 502 and "port is not open" in right.json()["message"]
        # envd's port is not subject to the traffic token.
        envd = _envd(hearth, sandbox["sandboxID"])
        assert httpx.get(f"{hearth.sandbox_url}/health", headers=envd).status_code == 204
        detail = api.get(f"/sandboxes/{sandbox['sandboxID']}").json()
        assert detail["network"] == {"allowPublicTraffic": False}
    finally:
        api.delete(f"/sandboxes/{sandbox['sandboxID']}")


def test_keep_alive_alternates_between_api_and_sandboxes(hearth: Hearth, created: dict) -> None:
    envd = _envd(hearth, created["sandboxID"])
    with httpx.Client(base_url=hearth.api_url) as client:
        for _ in range(3):
            assert client.get("/health").text == "Health check successful"
            assert client.get("/health", headers=envd).status_code == 204
            assert (
                client.get("/health", headers=_envd(hearth, "abcdefghij0123456789")).status_code
                == 502
            )
