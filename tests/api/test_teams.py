"""Teams, their keys and their limits as a user meets them: `hearth teams` and `hearth
keys` on the server's database while it serves, the REST routes of E2B's dashboard and
CLI (`/teams`, `/api-keys`), and each team held to its own limits through the SDK."""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
from e2b import RateLimitException, Sandbox

from .conftest import Hearth

pytestmark = pytest.mark.root

CONCURRENCY = "you have reached the maximum number of concurrent E2B sandboxes (1)"


def _hearth(hearth: Hearth, *args: str) -> subprocess.CompletedProcess[str]:
    """`hearth ARGS` against the serving server's database, as an operator runs it."""
    env = {**os.environ, "HEARTH_DATABASE_URL": hearth.database_url}
    return subprocess.run(
        [sys.executable, "-m", "hearth.cli", *args], env=env, capture_output=True, text=True
    )


def _team(hearth: Hearth, *limits: str) -> str:
    """A new team with `limits` (`hearth teams create` flags) and a key of it."""
    name = f"team-{uuid.uuid4().hex[:8]}"
    made = _hearth(hearth, "teams", "create", name, *limits)
    assert made.returncode == 0, made.stderr
    key = _hearth(hearth, "keys", "create", "--team", name)
    assert key.returncode == 0, key.stderr
    return key.stdout.strip()


@pytest.fixture
def api(hearth: Hearth) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hearth.api_url, timeout=60) as client:
        yield client


def _create(api: httpx.Client, key: str, **body: object) -> httpx.Response:
    return api.post(
        "/v2/sandboxes",
        headers={"X-API-Key": key},
        json={"templateID": "base", "timeout": 120, **body},
    )


def _kill_all(api: httpx.Client, key: str) -> None:
    for sandbox in api.get("/v2/sandboxes", headers={"X-API-Key": key}).json():
        api.delete(f"/sandboxes/{sandbox['sandboxID']}", headers={"X-API-Key": key})


# --- the routes -----------------------------------------------------------------------


def test_teams_lists_the_callers_team_with_either_header(hearth: Hearth, api) -> None:
    key = _team(hearth)
    by_key = api.get("/teams", headers={"X-API-Key": key})
    by_bearer = api.get("/teams", headers={"Authorization": f"Bearer {key}"})
    assert by_key.status_code == by_bearer.status_code == 200
    assert by_key.json() == by_bearer.json()
    (team,) = by_key.json()
    assert set(team) == {"teamID", "name", "apiKey", "isDefault"}
    assert team["apiKey"] == key and team["isDefault"] is False
    (default,) = api.get("/teams", headers={"X-API-Key": hearth.api_key}).json()
    assert default["isDefault"] is True and default["teamID"] != team["teamID"]
    assert api.get("/teams").status_code == 401
    assert api.get("/teams", headers={"Authorization": "Bearer e2b_" + "0" * 40}).status_code == 401


def test_api_keys_are_created_listed_renamed_and_revoked(hearth: Hearth, api) -> None:
    key = _team(hearth)
    auth = {"X-API-Key": key}
    created = api.post("/api-keys", headers=auth, json={"name": "ci"})
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["key"].startswith("e2b_") and new["name"] == "ci"
    assert new["mask"] == {
        "prefix": "e2b_",
        "valueLength": 40,
        "maskedValuePrefix": new["key"][4:6],
        "maskedValueSuffix": new["key"][-4:],
    }
    listed = api.get("/api-keys", headers=auth).json()
    assert {k["name"] for k in listed} == {"cli", "ci"}
    assert all("key" not in k for k in listed)  # kept hashed: never shown again

    # The new key works, through the SDK too.
    with_new = {"X-API-Key": new["key"]}
    assert api.get("/v2/sandboxes", headers=with_new).status_code == 200
    assert Sandbox.list(api_key=new["key"]).next_items() == []

    assert api.patch(f"/api-keys/{new['id']}", headers=auth, json={"name": "ci-2"}).is_success
    assert "ci-2" in {k["name"] for k in api.get("/api-keys", headers=auth).json()}
    assert api.patch(f"/api-keys/{new['id']}", headers=auth, json={"name": ""}).status_code == 400

    # Another team cannot see, rename or revoke it: not found, as for a key that is not.
    other = {"X-API-Key": hearth.api_key}
    assert new["id"] not in {k["id"] for k in api.get("/api-keys", headers=other).json()}
    assert api.patch(f"/api-keys/{new['id']}", headers=other, json={"name": "x"}).status_code == 404
    assert api.delete(f"/api-keys/{new['id']}", headers=other).status_code == 404

    assert api.delete(f"/api-keys/{new['id']}", headers=auth).status_code == 204
    assert api.get("/v2/sandboxes", headers=with_new).status_code == 401
    assert api.delete(f"/api-keys/{new['id']}", headers=auth).status_code == 404


# --- limits ---------------------------------------------------------------------------


def test_each_team_has_its_own_concurrency_limit(hearth: Hearth, api) -> None:
    key = _team(hearth, "--concurrent-sandboxes", "1")
    first = Sandbox.create("base", api_key=key, timeout=120)
    try:
        with pytest.raises(RateLimitException, match=re.escape(CONCURRENCY)):
            Sandbox.create("base", api_key=key, timeout=120)
        # Another team is not held to it.
        other = Sandbox.create("base", timeout=120)
        other.kill()
        # Raised while it serves: the next create sees it.
        raised = _hearth(hearth, "teams", "set", _name(api, key), "--concurrent-sandboxes", "2")
        assert raised.returncode == 0, raised.stderr
        second = Sandbox.create("base", api_key=key, timeout=120)
        assert second.commands.run("echo two").stdout == "two\n"
    finally:
        _kill_all(api, key)
    assert first.sandbox_id


def test_vcpu_and_memory_totals_are_held_per_team(hearth: Hearth, api) -> None:
    # base sandboxes have 2 vCPUs and 512 MiB: room for one of each limit.
    for flag, value, refusal in (
        ("--vcpus", "3", "maximum number of vCPUs of concurrent E2B sandboxes (3)"),
        ("--memory-mb", "1000", "maximum memory of concurrent E2B sandboxes (1000 MiB)"),
    ):
        key = _team(hearth, flag, value)
        try:
            assert _create(api, key).status_code == 201
            refused = _create(api, key)
            assert refused.status_code == 429
            assert refused.json() == {"code": 429, "message": refused.json()["message"]}
            assert refusal in refused.json()["message"]
        finally:
            _kill_all(api, key)
        # Killed, its share is free again.
        try:
            assert _create(api, key).status_code == 201
        finally:
            _kill_all(api, key)


def test_starts_per_second_are_rate_limited_with_retry_after(hearth: Hearth, api) -> None:
    key = _team(hearth, "--starts-per-second", "1")
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: _create(api, key), range(3)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201, 429, 429], [a.text for a in answers]
        for refused in (a for a in answers if a.status_code == 429):
            assert refused.json() == {"code": 429, "message": "Rate limit exceeded"}
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.headers["RateLimit-Limit"] == "1"
    finally:
        _kill_all(api, key)


def test_a_teams_longest_timeout_is_its_own(hearth: Hearth, api) -> None:
    key = _team(hearth, "--max-timeout", "600")
    refused = _create(api, key, timeout=601)
    assert refused.status_code == 400
    assert refused.json()["message"].startswith("Timeout cannot be greater than 0.16")
    created = _create(api, key, timeout=600)
    try:
        assert created.status_code == 201
        sandbox_id = created.json()["sandboxID"]
        longer = api.post(
            f"/sandboxes/{sandbox_id}/timeout", headers={"X-API-Key": key}, json={"timeout": 900}
        )
        assert longer.status_code == 400
    finally:
        _kill_all(api, key)
    # The default team keeps the server's.
    default = _create(api, hearth.api_key, timeout=601)
    assert default.status_code == 201
    Sandbox.kill(default.json()["sandboxID"])


def _name(api: httpx.Client, key: str) -> str:
    (team,) = api.get("/teams", headers={"X-API-Key": key}).json()
    return team["name"]
