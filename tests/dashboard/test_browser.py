"""The dashboard as a user drives it, in headless Chromium against a real `hearth serve`
with container sandboxes: logging in (and a wrong key refused), a sandbox made with the
E2B SDK appearing, paused, resumed and killed from the page (and the SDK seeing each),
a template build's log, API keys created and revoked (the SDK using and then refused
with them), the usage page, and another team's sandboxes never shown."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from api.conftest import Hearth
from e2b import (
    AuthenticationException,
    Sandbox,
    SandboxInfo,
    SandboxQuery,
    SandboxState,
    Template,
)
from playwright.sync_api import Locator, Page, expect

from .conftest import Steps, new_team_key

pytestmark = pytest.mark.root


def log_in(page: Page, hearth: Hearth, key: str | None = None) -> None:
    page.goto(hearth.api_url + "/")
    page.get_by_label("API key", exact=True).fill(key or hearth.api_key)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def go(page: Page, section: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=section).click()
    expect(page.get_by_role("heading", level=1, name=section)).to_be_visible()


def sandbox_row(page: Page, sandbox_id: str) -> Locator:
    cell = page.get_by_role("cell", name=sandbox_id, exact=True)
    return page.get_by_role("row").filter(has=cell)


def confirm(page: Page, action: str) -> None:
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name=action).click()
    expect(dialog).to_have_count(0)


@contextlib.contextmanager
def base_sandbox() -> Iterator[Sandbox]:
    """A `base` sandbox through the SDK, killed at the end unless the test has."""
    sbx = Sandbox.create("base", timeout=600)
    try:
        yield sbx
    finally:
        if any(s.sandbox_id == sbx.sandbox_id for s in _listed()):
            Sandbox.kill(sbx.sandbox_id)


@pytest.fixture
def sandbox(hearth: Hearth) -> Iterator[Sandbox]:
    with base_sandbox() as sbx:
        yield sbx


def _listed(api_key: str | None = None) -> list[SandboxInfo]:
    """Every running or paused sandbox of the key's team (the SDK's key by default)."""
    query = SandboxQuery(state=[SandboxState.RUNNING, SandboxState.PAUSED])
    return Sandbox.list(query=query, limit=100, api_key=api_key).next_items()


def test_log_in_refuses_a_wrong_key(page: Page, hearth: Hearth, steps: Steps) -> None:
    page.goto(hearth.api_url + "/")
    expect(page).to_have_url(re.compile(r"/dashboard/$"))
    expect(page.get_by_role("form", name="Log in")).to_be_visible()
    steps.shot("login")

    page.get_by_label("API key", exact=True).fill("e2b_" + "0" * 40)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("This API key was refused")
    expect(page.get_by_role("button", name="Log out")).to_have_count(0)
    steps.shot("wrong-key")

    page.get_by_label("API key", exact=True).fill("not a key")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Invalid API key format")

    page.get_by_label("API key", exact=True).fill(hearth.api_key)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1, name="Sandboxes")).to_be_visible()
    expect(page).to_have_title("Sandboxes · Hearth")
    expect(page.get_by_text("Team default")).to_be_visible()
    # The key lives in the tab's sessionStorage, nowhere the server or other tabs see.
    assert page.evaluate("sessionStorage.getItem('hearth.apiKey')") == hearth.api_key
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
    steps.shot("logged-in")

    page.reload()  # the session survives a reload of the tab
    expect(page.get_by_role("heading", level=1, name="Sandboxes")).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("API key", exact=True)).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_a_sandbox_appears_is_paused_resumed_and_killed(
    page: Page, hearth: Hearth, steps: Steps
) -> None:
    log_in(page, hearth)
    expect(page.get_by_text("No sandboxes are running or paused.")).to_be_visible()
    with base_sandbox() as sandbox:
        _pause_resume_and_kill(page, sandbox, steps)


def _pause_resume_and_kill(page: Page, sandbox: Sandbox, steps: Steps) -> None:
    row = sandbox_row(page, sandbox.sandbox_id)  # it appears: the page polls
    expect(row.get_by_text("running", exact=True)).to_be_visible()
    expect(row.get_by_role("cell", name="base", exact=True)).to_be_visible()
    chart = row.get_by_role("img", name=f"CPU and memory of sandbox {sandbox.sandbox_id}")
    expect(chart).to_be_visible()
    expect(row).to_contain_text(re.compile(r"CPU \d+\.\d% · memory \d+ MiB of \d+ MiB"))
    steps.shot("sandbox-running")

    # Asked first: cancelling leaves it running.
    row.get_by_role("button", name=f"Pause sandbox {sandbox.sandbox_id}").click()
    steps.shot("pause-asked")
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.RUNNING

    row.get_by_role("button", name=f"Pause sandbox {sandbox.sandbox_id}").click()
    confirm(page, "Pause sandbox")
    expect(row.get_by_text("paused", exact=True)).to_be_visible()
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED
    steps.shot("sandbox-paused")

    row.get_by_role("button", name=f"Resume sandbox {sandbox.sandbox_id}").click()
    confirm(page, "Resume sandbox")
    expect(row.get_by_text("running", exact=True)).to_be_visible()
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.RUNNING
    assert sandbox.commands.run("echo resumed").stdout == "resumed\n"
    steps.shot("sandbox-resumed")

    row.get_by_role("button", name=f"Kill sandbox {sandbox.sandbox_id}").click()
    confirm(page, "Kill sandbox")
    expect(row).to_have_count(0)
    assert sandbox.sandbox_id not in {s.sandbox_id for s in _listed()}
    assert not Sandbox.kill(sandbox.sandbox_id)  # already gone: nothing to kill
    steps.shot("sandbox-killed")


def test_an_action_that_fails_says_why(
    page: Page, hearth: Hearth, sandbox: Sandbox, steps: Steps
) -> None:
    log_in(page, hearth)
    row = sandbox_row(page, sandbox.sandbox_id)
    expect(row).to_be_visible()
    row.get_by_role("button", name=f"Kill sandbox {sandbox.sandbox_id}").click()
    sandbox.kill()  # behind the page's back, between the question and the answer
    confirm(page, "Kill sandbox")
    said = f'Could not kill sandbox {sandbox.sandbox_id}: Sandbox "{sandbox.sandbox_id}"'
    expect(page.get_by_role("alert")).to_contain_text(said)
    expect(row).to_have_count(0)
    steps.shot("kill-failed")


def test_another_teams_sandboxes_are_not_shown(
    page: Page, hearth: Hearth, other_key: str, sandbox: Sandbox, steps: Steps
) -> None:
    theirs = Sandbox.create("base", timeout=300, api_key=other_key)
    try:
        log_in(page, hearth)
        expect(sandbox_row(page, sandbox.sandbox_id)).to_be_visible()
        expect(sandbox_row(page, theirs.sandbox_id)).to_have_count(0)
        steps.shot("own-team")

        page.get_by_role("button", name="Log out").click()
        log_in(page, hearth, other_key)
        expect(page.get_by_text("Team neighbours")).to_be_visible()
        expect(sandbox_row(page, theirs.sandbox_id)).to_be_visible()
        expect(sandbox_row(page, sandbox.sandbox_id)).to_have_count(0)
        steps.shot("other-team")
    finally:
        theirs.kill()


def test_a_builds_log(page: Page, hearth: Hearth, steps: Steps) -> None:
    name = f"dashboard-{uuid.uuid4().hex[:8]}"
    # The marker is computed by the build's shell, so the line proves the command ran.
    template = Template().from_template("base").run_cmd("echo dashboard-marker-$((6 * 7))")
    info = Template.build(template, name)

    log_in(page, hearth)
    go(page, "Templates")
    page.get_by_role("link", name=re.compile(re.escape(name))).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(name)
    builds = page.get_by_role("table", name="Builds")
    expect(builds.get_by_role("row").filter(has_text=info.build_id)).to_contain_text("ready")
    steps.shot("template")

    builds.get_by_role("link", name=info.build_id).click()
    expect(page.get_by_role("heading", level=1, name=f"Build {info.build_id}")).to_be_visible()
    log = page.get_by_role("log", name="Build log")
    expect(log).to_contain_text("dashboard-marker-42")
    expect(page.get_by_text("ready", exact=True)).to_be_visible()
    steps.shot("build-log")

    # The built-in `base`, built when the server started, public to every team.
    go(page, "Templates")
    page.get_by_role("link", name="base", exact=True).click()
    first = page.get_by_role("table", name="Builds").get_by_role("link").first
    expect(first).to_be_visible()
    first.click()
    expect(page.get_by_role("log", name="Build log")).to_contain_text("FROM")
    steps.shot("base-build-log")


def test_a_failing_build_followed_from_a_link(page: Page, hearth: Hearth, steps: Steps) -> None:
    """A build's address opened before logging in: after it, that build's page, whose
    log follows the build to its end, here an error with its reason."""
    template = (
        Template()
        .from_template("base")
        .run_cmd("sleep 2; echo about to fail; exit 3")  # long enough to be seen building
    )
    info = Template.build_in_background(template, f"failing-{uuid.uuid4().hex[:8]}")
    page.goto(f"{hearth.api_url}/dashboard/#/templates/{info.template_id}/builds/{info.build_id}")
    page.get_by_label("API key", exact=True).fill(hearth.api_key)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1, name=f"Build {info.build_id}")).to_be_visible()
    steps.shot("build-followed")
    expect(page.get_by_text("error", exact=True)).to_be_visible()
    expect(page.get_by_role("log", name="Build log")).to_contain_text("about to fail")
    reason = Template.get_build_status(info).reason
    assert reason is not None and reason.message
    expect(page.get_by_text(reason.message, exact=True)).to_be_visible()
    steps.shot("build-failed")


def test_api_keys_are_created_and_revoked(page: Page, hearth: Hearth, steps: Steps) -> None:
    name = f"<b>dash-{uuid.uuid4().hex[:8]}</b>"
    log_in(page, hearth)
    go(page, "API keys")
    expect(page.get_by_role("table", name="API keys")).to_contain_text("(this session)")
    page.get_by_label("Name of a new key").fill(name)
    page.get_by_role("button", name="Create key").click()
    shown = page.get_by_label("New API key")
    expect(shown).to_have_text(re.compile(r"^e2b_[0-9a-f]{40}$"))
    key = shown.inner_text()
    row = page.get_by_role("table", name="API keys").get_by_role("row").filter(has_text=name)
    expect(row).to_contain_text(key[:6] + "…" + key[-4:])
    # A name is text, never markup: the tags show as typed.
    expect(row.get_by_role("cell", name=name, exact=True)).to_be_visible()
    assert row.locator("b").count() == 0
    steps.shot("key-created")

    # The SDK is let in with it, to the same team's sandboxes.
    ids = {s.sandbox_id for s in _listed(api_key=key)}
    assert ids == {s.sandbox_id for s in _listed()}

    page.get_by_role("button", name="Done").click()
    expect(shown).to_have_count(0)  # shown once, never again
    row.get_by_role("button", name=f"Revoke {name}").click()
    steps.shot("revoke-asked")
    confirm(page, "Revoke key")
    expect(row).to_have_count(0)
    steps.shot("key-revoked")

    with pytest.raises(AuthenticationException):
        _listed(api_key=key)


def test_revoking_the_sessions_key_logs_out(page: Page, hearth: Hearth, steps: Steps) -> None:
    key = new_team_key(hearth, f"short-lived-{uuid.uuid4().hex[:6]}")
    log_in(page, hearth, key)
    go(page, "API keys")
    row = page.get_by_role("row").filter(has_text="(this session)")
    row.get_by_role("button", name=re.compile("^Revoke ")).click()
    expect(page.get_by_role("dialog")).to_contain_text("you will be logged out")
    confirm(page, "Revoke key")
    expect(page.get_by_label("API key", exact=True)).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("no longer accepts")
    steps.shot("logged-out")


def test_usage_page(page: Page, hearth: Hearth, sandbox: Sandbox, steps: Steps) -> None:
    log_in(page, hearth)
    go(page, "Usage")
    # A chart of the period that holds the sandbox above.
    status = page.get_by_role("status")
    expect(status).to_have_text(re.compile(r"At most [1-9]\d* sandboxes at once"))
    expect(page.get_by_role("alert")).to_have_count(0)
    page.get_by_label("Period").select_option(label="Last 24 hours")
    expect(status).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)
    steps.shot("usage")


def test_usage_chart_of_team_metrics(
    page: Page, hearth: Hearth, sandbox: Sandbox, steps: Steps
) -> None:
    """The chart of `GET /teams/{teamID}/metrics` (E2B's `TeamMetric`s) says the peak the
    server answers for the last hour, which holds the running sandbox."""
    now = int(time.time())
    with httpx.Client(base_url=hearth.api_url, headers={"X-API-Key": hearth.api_key}) as api:
        team = api.get("/teams").json()[0]["teamID"]
        served = api.get(f"/teams/{team}/metrics", params={"start": now - 3600, "end": now})
    assert served.status_code == 200, served.text
    peak = max(p["concurrentSandboxes"] for p in served.json())
    assert peak >= 1
    log_in(page, hearth)
    go(page, "Usage")
    expect(page.get_by_role("status")).to_contain_text(f"At most {peak} sandboxes at once")
    chart = page.get_by_role("img", name="Concurrent sandboxes and start rate over time")
    expect(chart.locator("canvas")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)
    steps.shot("usage-chart")
