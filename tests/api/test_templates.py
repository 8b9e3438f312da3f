"""The template control plane on the wire and through the released E2B Python SDK: the
build registration's checks, uploads, build status paging, tags, lists, publishing,
deletion and team isolation (spec §2.5, §5, §7.7), and real builds of templates that
sandboxes then start from.

The server is a real `hearth serve --runtime container` (builds run in container
sandboxes whatever runtime runs the rest), in a thread, on a data directory every user
can search, as the container runtime needs.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import BuildException, Sandbox, SandboxException, Template

from .conftest import Hearth, run_npm_script, serve_containers, served_containers, team_key

pytestmark = pytest.mark.root

ID = re.compile(r"[a-z0-9]{20}")
JS_BUILD = Path(__file__).with_name("template_build.mjs")


@pytest.fixture(scope="module")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-templates-") as info:
        yield info


@pytest.fixture(scope="module")
def other_key(hearth: Hearth) -> str:
    return team_key(hearth, "others")


@pytest.fixture
def api(hearth: Hearth) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hearth.api_url, headers={"X-API-Key": hearth.api_key}) as client:
        yield client


@pytest.fixture
def other(hearth: Hearth, other_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hearth.api_url, headers={"X-API-Key": other_key}) as client:
        yield client


def _error(response: httpx.Response, status: int) -> str:
    """The E2B error body's message, after checking the status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == status
    return body["message"]


def _register(api: httpx.Client, name: str, **fields: object) -> dict:
    response = api.post("/v3/templates", json={"name": name, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def _not_creatable(ref: str, **opts: str) -> str:
    """What the SDK's create says of a template it cannot start (E2B answers 404)."""
    with pytest.raises(SandboxException) as raised:
        Sandbox.create(ref, **opts)  # type: ignore[arg-type]
    assert raised.value.status_code == 404, raised.value
    return str(raised.value)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- registration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"name": "v", "cpuCount": 0}, "CPU"),
        ({"name": "v", "cpuCount": 3}, "even"),
        ({"name": "v", "cpuCount": 1024}, "CPU"),
        ({"name": "v", "memoryMB": 32}, "memory"),
        ({"name": "v", "memoryMB": 1001}, "even"),
        ({"name": "v", "memoryMB": 1048576}, "memory"),
        ({"name": "v", "minFreeDiskMb": -1}, "minFreeDiskMb"),
        ({}, "Name is required"),
        ({"name": ""}, "Name is required"),
        ({"name": "not valid!"}, "Invalid name"),
        ({"name": "v:no spaces"}, "Invalid name"),
        ({"name": "v", "tags": ["bad tag"]}, "Invalid tag"),
        ({"name": "v", "tags": [str(uuid.uuid4())]}, "UUID"),
        ({"name": "someone-else/v"}, "namespace"),
        ({"name": "v", "teamID": "another-team"}, "teamID"),
        ({"name": "v", "cpuCount": "two"}, "cpuCount"),
    ],
)
def test_registration_rejects(api: httpx.Client, body: dict, says: str) -> None:
    assert says in _error(api.post("/v3/templates", json=body), 400)


def test_registration_answer_and_reuse(api: httpx.Client, other: httpx.Client) -> None:
    name = _unique("reg")
    first = _register(api, f"{name.upper()}:V1", tags=["stable", "1.0"], cpuCount=1)
    assert set(first) == {"templateID", "buildID", "public", "names", "tags", "aliases"}
    assert ID.fullmatch(first["templateID"]) and uuid.UUID(first["buildID"])
    assert first["names"] == first["aliases"] == [name]  # lower-cased, without the tag
    assert first["public"] is False
    assert set(first["tags"]) == {"default", "v1", "stable", "1.0"}
    # The same name (also under the team's own namespace) is the same template.
    again = _register(api, f"default/{name}", memoryMB=2048)
    assert again["templateID"] == first["templateID"] and again["buildID"] != first["buildID"]
    assert again["tags"] == ["default"]
    # Another team cannot take it, nor register under this team's namespace.
    assert "already taken" in _error(other.post("/v3/templates", json={"name": name}), 400)
    assert "namespace" in _error(
        other.post("/v3/templates", json={"name": f"default/x{name}"}), 400
    )
    # The deprecated `alias` works as `name`.
    assert _register(api, None, alias=name)["templateID"] == first["templateID"]  # type: ignore[arg-type]


def test_a_waiting_build_and_bad_build_ids(api: httpx.Client) -> None:
    registered = _register(api, _unique("wait"))
    tid, bid = registered["templateID"], registered["buildID"]
    status = api.get(f"/templates/{tid}/builds/{bid}/status")
    assert status.status_code == 200, status.text
    assert status.json() == {
        "templateID": tid,
        "buildID": bid,
        "status": "waiting",
        "logEntries": [],
        "logs": [],
    }
    _error(api.get(f"/templates/{tid}/builds/not-a-uuid/status"), 400)
    _error(api.get(f"/templates/{tid}/builds/{uuid.uuid4()}/status"), 404)
    _error(api.get(f"/templates/{tid}/builds/{bid}/status", params={"limit": 101}), 400)
    _error(api.get(f"/templates/{tid}/builds/{bid}/status", params={"logsOffset": -1}), 400)
    assert api.get(f"/templates/{tid}/builds/{bid}/logs").json() == {"logs": []}
    # A template whose only build never ran starts no sandbox.
    assert "no ready build" in _error(api.post("/v2/sandboxes", json={"templateID": tid}), 404)
    detail = api.get(f"/templates/{tid}").json()
    assert detail["buildStatus"] == "waiting" and detail["buildID"] == bid
    assert [b["buildID"] for b in detail["builds"]] == [bid]
    assert "finishedAt" not in detail["builds"][0]  # absent, never null: the SDK parses it


def test_upload_links_are_one_time(api: httpx.Client, hearth: Hearth) -> None:
    tid = _register(api, _unique("upload"))["templateID"]
    files_hash = uuid.uuid4().hex + uuid.uuid4().hex
    link = api.get(f"/templates/{tid}/files/{files_hash}")
    assert link.status_code == 201, link.text
    assert link.json()["present"] is False
    url = link.json()["url"]
    assert url.startswith(f"{hearth.api_url}/_hearth/uploads/")
    # The SDK uploads with a plain client: no API key.
    assert httpx.put(url, content=b"tar bytes").status_code == 200
    assert "used already" in _error(httpx.put(url, content=b"again"), 410)
    _error(httpx.put(f"{hearth.api_url}/_hearth/uploads/made-up", content=b"x"), 404)
    assert api.get(f"/templates/{tid}/files/{files_hash}").json() == {"present": True}
    _error(api.get(f"/templates/{tid}/files/not.a.hash"), 400)
    _error(api.get(f"/templates/{tid}/files/..%2F..%2Fetc"), 400)


def test_starting_a_build_checks_what_it_needs(api: httpx.Client) -> None:
    registered = _register(api, _unique("start"))
    tid, bid = registered["templateID"], registered["buildID"]
    start = f"/v2/templates/{tid}/builds/{bid}"
    copy = {"type": "COPY", "args": ["a", "/a"], "filesHash": "f" * 64}
    says = _error(api.post(start, json={"fromTemplate": "base", "steps": [copy]}), 400)
    assert says == f"files for step 1 (hash {'f' * 64}) were not uploaded"
    _error(api.post(start, json={"fromTemplate": "no-such-template"}), 404)
    _error(api.post(start, json={"fromTemplate": "base:no-such-tag"}), 404)
    _error(api.post(start, json={"fromImage": "debian", "fromTemplate": "base"}), 400)
    _error(api.post(start, json={}), 400)
    _error(api.post(start, json={"fromImage": "debian", "steps": [{"type": "NOPE"}]}), 400)
    aws = {"type": "aws", "awsAccessKeyId": "a", "awsSecretAccessKey": "s", "awsRegion": "r"}
    says = _error(api.post(start, json={"fromImage": "x", "fromImageRegistry": aws}), 400)
    assert "AWS ECR credentials are not supported" in says
    gcp = {"type": "gcp", "serviceAccountJson": "{}"}
    says = _error(api.post(start, json={"fromImage": "x", "fromImageRegistry": gcp}), 400)
    assert "GCP Artifact Registry credentials are not supported" in says
    _error(api.post(f"/v2/templates/{tid}/builds/{uuid.uuid4()}", json={"fromImage": "x"}), 404)
    _error(api.post(f"/v2/templates/{tid}/builds/nope", json={"fromImage": "x"}), 400)
    _error(api.post(f"/v2/templates/no-such/builds/{bid}", json={"fromImage": "x"}), 404)
    # Nothing was started: the build still waits.
    assert api.get(f"/templates/{tid}/builds/{bid}/status").json()["status"] == "waiting"


def test_another_teams_private_template_is_not_there(
    api: httpx.Client, other: httpx.Client
) -> None:
    name = _unique("private")
    registered = _register(api, name)
    tid, bid = registered["templateID"], registered["buildID"]
    for ref in (tid, name):
        _error(other.get(f"/templates/{ref}"), 404)
        _error(other.get(f"/templates/{ref}/tags"), 404)
        _error(other.get(f"/templates/{ref}/builds/{bid}/status"), 404)
        _error(other.get(f"/templates/{ref}/builds/{bid}/logs"), 404)
        _error(other.get(f"/templates/{ref}/files/{'a' * 64}"), 404)
        _error(other.post(f"/v2/templates/{ref}/builds/{bid}", json={"fromImage": "x"}), 404)
        _error(other.delete(f"/templates/{ref}"), 404)
        _error(other.patch(f"/v2/templates/{ref}", json={"public": True}), 403)
    _error(other.get(f"/templates/aliases/{name}"), 403)  # exists, not yours
    _error(other.post("/templates/tags", json={"target": name, "tags": ["x"]}), 404)
    _error(other.request("DELETE", "/templates/tags", json={"name": name, "tags": ["x"]}), 404)
    assert tid not in {t["templateID"] for t in other.get("/templates").json()}
    assert api.get(f"/templates/aliases/{name}").json() == {"templateID": tid, "public": False}
    assert api.get(f"/templates/aliases/default%2F{name}").json()["templateID"] == tid


def test_lists(api: httpx.Client, hearth: Hearth) -> None:
    for _ in range(3):
        _register(api, _unique("list"))
    everything = api.get("/templates").json()
    assert {"base", "code-interpreter-v1"} <= {t["templateID"] for t in everything}
    paged, token, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"nextToken": token} if token else {})}
        response = api.get("/v2/templates", params=params)
        assert response.status_code == 200, response.text
        paged += response.json()
        pages += 1
        token = response.headers.get("X-Next-Token")
        if not token:
            break
    assert [t["templateID"] for t in paged] == [t["templateID"] for t in everything]
    assert pages == (len(everything) + 1) // 2
    for path in ("/templates", "/v2/templates"):
        _error(api.get(path, params={"teamID": "someone-else"}), 400)
        _error(httpx.get(f"{hearth.api_url}{path}", headers={"X-API-Key": "e2b_" + "0" * 40}), 401)
    _error(api.get("/v2/templates", params={"nextToken": "garbage"}), 400)


def test_tag_and_delete_rules(api: httpx.Client) -> None:
    name = _unique("tags")
    _register(api, name)
    remove = {"name": name, "tags": ["default"]}
    assert "default" in _error(api.request("DELETE", "/templates/tags", json=remove), 400)
    remove = {"name": f"{name}:v1", "tags": ["v1"]}
    _error(api.request("DELETE", "/templates/tags", json=remove), 400)
    _error(api.request("DELETE", "/templates/tags", json={"name": name, "tags": []}), 400)
    _error(api.post("/templates/tags", json={"target": name, "tags": []}), 400)
    _error(api.post("/templates/tags", json={"target": name, "tags": ["Bad Tag"]}), 400)
    _error(api.post("/templates/tags", json={"target": "no-such-x", "tags": ["a"]}), 404)
    # A template with no ready build has no tag to copy yet.
    _error(api.post("/templates/tags", json={"target": name, "tags": ["a"]}), 404)
    assert api.get(f"/templates/{name}/tags").json() == []
    _error(api.delete(f"/templates/{name}:v1"), 400)
    assert api.delete(f"/templates/{name}").status_code == 204
    _error(api.delete(f"/templates/{name}"), 404)
    _error(api.get(f"/templates/{name}"), 404)


def test_the_builtins_are_public_templates_with_builds(api: httpx.Client) -> None:
    base = api.get("/templates/base").json()
    assert base["public"] is True and base["buildStatus"] == "ready"
    assert base["builds"][0]["status"] == "ready"
    assert [t["tag"] for t in api.get("/templates/base/tags").json()] == ["default"]
    _error(api.delete("/templates/base"), 403)
    _error(api.patch("/v2/templates/base", json={"public": False}), 403)
    _error(api.post("/templates/tags", json={"target": "base", "tags": ["mine"]}), 403)
    _error(api.post("/v3/templates", json={"name": "base"}), 400)


# --- real builds through the SDK ----------------------------------------------------------


def test_sdk_build_with_files_env_and_tags(tmp_path: Path, api: httpx.Client) -> None:
    name = _unique("sdk")
    (tmp_path / "hello.txt").write_text("hello from the build context\n")
    template = (
        Template(file_context_path=tmp_path)
        .from_template("base")
        .copy("hello.txt", "/home/user/hello.txt")
        .set_envs({"GREETING": "hi there"})
        .run_cmd("echo $GREETING > /home/user/env.txt")
    )
    logs: list[str] = []
    info = Template.build(
        template,
        f"{name}:v1",
        cpu_count=1,
        memory_mb=512,
        on_build_logs=lambda entry: logs.append(entry.message),
    )
    assert any("Template created with ID:" in m for m in logs)
    assert any(m.startswith("Uploaded 'hello.txt'") for m in logs)
    assert info.name == f"{name}:v1" and set(info.tags) >= {"default", "v1"}
    for ref in (f"{name}:v1", name, info.template_id):
        sandbox = Sandbox.create(ref)
        try:
            assert sandbox.files.read("/home/user/hello.txt") == "hello from the build context\n"
            assert sandbox.files.read("/home/user/env.txt") == "hi there\n"
            assert sandbox.commands.run("echo $GREETING").stdout == "hi there\n"
            detail = api.get(f"/sandboxes/{sandbox.sandbox_id}").json()
            assert (detail["cpuCount"], detail["memoryMB"]) == (1, 512)
            assert detail["templateID"] == info.template_id and detail["alias"] == name
        finally:
            sandbox.kill()
    _not_creatable(f"{name}:no-such-tag")
    # The SDK's tag calls.
    assert Template.exists(name) and not Template.exists(_unique("never"))
    assert {t.tag for t in Template.get_tags(name)} == {"default", "v1"}
    assigned = Template.assign_tags(f"{name}:v1", ["stable"])
    assert assigned.build_id == info.build_id and assigned.tags == ["stable"]
    assert {t.tag for t in Template.get_tags(info.template_id)} == {"default", "v1", "stable"}
    Template.remove_tags(name, "stable")
    assert {t.tag for t in Template.get_tags(name)} == {"default", "v1"}
    # The same files again: the upload is skipped, the layers' cache reused.
    logs.clear()
    again = Template.build(template, name, on_build_logs=lambda e: logs.append(e.message))
    assert any("Skipping upload of 'hello.txt'" in m for m in logs)
    assert again.template_id == info.template_id and again.build_id != info.build_id
    listed = {t["templateID"]: t for t in api.get("/templates").json()}[info.template_id]
    assert listed["buildID"] == again.build_id and listed["buildStatus"] == "ready"
    assert listed["buildCount"] == 2 and listed["names"] == [name]


def test_build_log_paging_is_exact(api: httpx.Client) -> None:
    template = (
        Template().from_template("base").run_cmd("for i in $(seq 1 300); do echo line $i; done")
    )
    seen: list[str] = []
    info = Template.build(template, _unique("logs"), on_build_logs=lambda e: seen.append(e.message))
    path = f"/templates/{info.template_id}/builds/{info.build_id}"
    whole, offset = [], 0
    while True:
        page = api.get(f"{path}/status", params={"logsOffset": offset}).json()
        assert page["status"] == "ready" and len(page["logEntries"]) <= 100
        assert page["logs"] == [e["message"] for e in page["logEntries"]]
        if not page["logEntries"]:
            break
        whole += page["logEntries"]
        offset += len(page["logEntries"])
    assert len(whole) > 1
    # Any page size reads the same entries, each once and in order.
    small, offset = [], 0
    while entries := api.get(f"{path}/status", params={"logsOffset": offset, "limit": 7}).json()[
        "logEntries"
    ]:
        small += entries
        offset += len(entries)
    assert small == whole
    # The SDK printed each entry it polled, after its own lines.
    assert [m for m in seen if m in {e["message"] for e in whole}] == [e["message"] for e in whole]
    errors = api.get(f"{path}/status", params={"level": "error"}).json()["logEntries"]
    assert all(e["level"] == "error" for e in errors)
    backward = api.get(f"{path}/logs", params={"direction": "backward", "limit": 3}).json()
    assert [e["message"] for e in backward["logs"]] == [e["message"] for e in whole[-3:]][::-1]


def test_a_failed_build(api: httpx.Client) -> None:
    name = _unique("fails")
    template = Template().from_template("base").run_cmd("echo about to fail; exit 3")
    with pytest.raises(BuildException):
        Template.build(template, name)
    template_id = api.get(f"/templates/aliases/{name}").json()["templateID"]
    build = api.get(f"/templates/{template_id}").json()["builds"][0]
    status = api.get(f"/templates/{template_id}/builds/{build['buildID']}/status").json()
    assert status["status"] == "error" and status["reason"]["message"]
    assert status["reason"].get("step") == "1"
    assert "no ready build" in _error(api.post("/v2/sandboxes", json={"templateID": name}), 404)


def test_build_in_background(api: httpx.Client) -> None:
    template = Template().from_template("base").run_cmd("touch /home/user/made-in-background")
    info = Template.build_in_background(template, _unique("background"))
    status = Template.get_build_status(info)
    while status.status.value in ("waiting", "building"):
        time.sleep(0.2)
        status = Template.get_build_status(info)
    assert status.status.value == "ready", status.reason
    sandbox = Sandbox.create(info.template_id)
    try:
        assert sandbox.files.exists("/home/user/made-in-background")
    finally:
        sandbox.kill()


def test_publish_for_other_teams(other_key: str, api: httpx.Client) -> None:
    name = _unique("shared")
    info = Template.build(
        Template().from_template("base").run_cmd("echo shared > /home/user/s"), name
    )
    _not_creatable(name, api_key=other_key)
    published = api.patch(f"/v2/templates/{info.template_id}", json={"public": True})
    assert published.status_code == 200 and published.json() == {"names": [name]}
    sandbox = Sandbox.create(name, api_key=other_key)
    try:
        assert sandbox.files.read("/home/user/s") == "shared\n"
    finally:
        sandbox.kill()
    # Another team builds on it (fromTemplate), but may not change it.
    mine = _unique("derived")
    Template.build(
        Template().from_template(name).run_cmd("cat /home/user/s > /home/user/d"),
        mine,
        api_key=other_key,
    )
    sandbox = Sandbox.create(mine, api_key=other_key)
    try:
        assert sandbox.files.read("/home/user/d") == "shared\n"
    finally:
        sandbox.kill()
    headers = {"X-API-Key": other_key}
    _error(api.delete(f"/templates/{name}", headers=headers), 403)
    assert api.patch(f"/templates/{info.template_id}", json={"public": False}).status_code == 200
    _not_creatable(name, api_key=other_key)


def test_delete_leaves_running_sandboxes_running(api: httpx.Client) -> None:
    name = _unique("deleted")
    info = Template.build(
        Template().from_template("base").run_cmd("echo kept > /home/user/k"), name
    )
    sandbox = Sandbox.create(name)
    try:
        assert api.delete(f"/templates/{name}").status_code == 204
        assert sandbox.files.read("/home/user/k") == "kept\n"
        assert sandbox.commands.run("cat /home/user/k").stdout == "kept\n"
        _not_creatable(name)
        _error(api.get(f"/templates/{info.template_id}"), 404)
        assert not Template.exists(name)
    finally:
        sandbox.kill()


def test_a_paused_sandbox_of_a_deleted_template_resumes(api: httpx.Client) -> None:
    """Deleting a template frees the layers nobody uses: a filesystem-only pause still
    needs them to boot again."""
    name = _unique("paused-deleted")
    Template.build(Template().from_template("base").run_cmd("echo kept > /home/user/k"), name)
    sandbox = Sandbox.create(name)
    try:
        sandbox.beta_pause(keep_memory=False)
        assert api.delete(f"/templates/{name}").status_code == 204
        resumed = Sandbox.connect(sandbox.sandbox_id)
        assert resumed.commands.run("cat /home/user/k").stdout == "kept\n"
    finally:
        sandbox.kill()


def test_the_newest_tag_assignment_wins() -> None:
    name = _unique("newest")
    first = Template.build(
        Template().from_template("base").run_cmd("echo 1 > /home/user/v"), f"{name}:v1"
    )
    second = Template.build(
        Template().from_template("base").run_cmd("echo 2 > /home/user/v"), f"{name}:v2"
    )
    assert first.build_id != second.build_id

    def version(ref: str) -> str:
        sandbox = Sandbox.create(ref)
        try:
            return sandbox.files.read("/home/user/v").strip()
        finally:
            sandbox.kill()

    assert (version(name), version(f"{name}:v1"), version(f"{name}:v2")) == ("2", "1", "2")
    Template.assign_tags(f"{name}:v1", "stable")
    assert version(f"{name}:stable") == "1"
    Template.assign_tags(f"{name}:v2", "stable")
    assert version(f"{name}:stable") == "2"
    Template.assign_tags(f"{name}:v1", "default")
    assert version(name) == "1"


def test_npm_sdk_builds_a_template(hearth: Hearth) -> None:
    name = _unique("npm")
    printed = run_npm_script(JS_BUILD, {**hearth.env(), "HEARTH_TEMPLATE_NAME": name})
    results = {key: values[-1] for key, values in printed.items()}
    assert ID.fullmatch(results["info"]["templateId"])
    assert set(results["info"]["tags"]) == {"default", "js"}
    assert results["uploaded"] is True and results["exists"] is True
    assert results["tags"] == ["default", "js"]
    assert results["stdout"] == "copied by js\nbuilt\n"


def _wait_until_building(api: httpx.Client, template_id: str, build_id: str) -> None:
    path = f"/templates/{template_id}/builds/{build_id}/status"
    while (status := api.get(path).json()["status"]) == "waiting":
        time.sleep(0.2)
    assert status == "building"


def test_delete_cancels_a_running_build(api: httpx.Client) -> None:
    name = _unique("cancelled")
    info = Template.build_in_background(Template().from_template("base").run_cmd("sleep 600"), name)
    _wait_until_building(api, info.template_id, info.build_id)
    assert api.delete(f"/templates/{name}").status_code == 204
    _error(api.get(f"/templates/{info.template_id}/builds/{info.build_id}/status"), 404)
    assert not Template.exists(name)


def test_a_build_cut_off_by_a_stop_is_an_error(container_data_dir: Path) -> None:
    server, info = serve_containers(container_data_dir)
    try:
        with httpx.Client(base_url=info.api_url, headers={"X-API-Key": info.api_key}) as api:
            template = Template().from_template("base").run_cmd("sleep 600")
            build = Template.build_in_background(
                template, _unique("cut"), api_key=info.api_key, api_url=info.api_url
            )
            _wait_until_building(api, build.template_id, build.build_id)
    finally:
        assert server.stop(), "hearth serve did not stop"
    server, again = serve_containers(container_data_dir)
    try:
        path = f"/templates/{build.template_id}/builds/{build.build_id}/status"
        with httpx.Client(base_url=again.api_url, headers={"X-API-Key": info.api_key}) as api:
            status = api.get(path, params={"logsOffset": 0}).json()
            assert status["status"] == "error", status
            assert status["reason"]["message"] == "the build was cancelled"
            assert status["logEntries"][-1]["level"] == "error"
            assert "no ready build" in _error(
                api.post("/v2/sandboxes", json={"templateID": build.template_id}), 404
            )
    finally:
        assert server.stop(), "hearth serve did not stop"
