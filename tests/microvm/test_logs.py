"""Sandbox logs of a microVM sandbox through `hearth serve` and the real e2b SDK: the
guest's envd lines reach the logs routes the same way as a container's (pulled through
envd's port), also after the kill."""

from __future__ import annotations

import json

import httpx

from .conftest import MICROVM
from .test_serve import served  # noqa: F401 - the module's own `hearth serve --runtime microvm`

pytestmark = MICROVM


def test_guest_envd_lines_are_served_and_kept_after_the_kill(served) -> None:  # noqa: F811
    import os

    from e2b import Sandbox

    sbx = Sandbox.create("base", timeout=600)
    try:
        sbx.commands.run("echo from-the-guest; echo to-stderr >&2")
        sbx.files.write("/tmp/guest.txt", "x")
    finally:
        sbx.kill()
    headers = {"X-API-Key": os.environ["E2B_API_KEY"]}
    url = f"{os.environ['E2B_API_URL']}/sandboxes/{sbx.sandbox_id}/logs"
    records = [json.loads(e["line"]) for e in httpx.get(url, headers=headers).json()["logs"]]
    output = {(r.get("stream"), r["message"]) for r in records}
    assert {("stdout", "from-the-guest"), ("stderr", "to-stderr")} <= output
    assert any(r["message"] == "File write" and r["path"] == "/tmp/guest.txt" for r in records)
    assert [r["event_type"] for r in records if r["logger"] == "system"][-1] == "sandbox.killed"
