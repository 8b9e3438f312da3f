"""The E2B CLI (`@e2b/cli`, pinned in tests/api/cli) against `hearth serve`, as a user
runs it with E2B_API_URL and E2B_API_KEY: `template create` from a Dockerfile (the JS
SDK's build path, COPY uploads included), `list`, `publish`/`unpublish`, `delete`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox, Template

from .conftest import Hearth, run_e2b_cli, served_containers

pytestmark = pytest.mark.root

NAME = "cli-tpl"


@pytest.fixture(scope="module")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-cli-") as info:
        yield info


def test_create_list_publish_delete(e2b_cli: Path, hearth: Hearth, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("copied by the cli\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM e2bdev/base\n"
        "RUN echo built > /tmp/built\n"
        "ENV CLI_VAR=from-the-dockerfile\n"
        "COPY hello.txt /home/user/hello.txt\n"
    )
    create = ["template", "create", NAME, "-p", str(tmp_path), "--cpu-count", "1"]
    run_e2b_cli(e2b_cli, hearth, *create, "--memory-mb", "512")
    sandbox = Sandbox.create(NAME)
    try:
        out = sandbox.commands.run("cat /tmp/built /home/user/hello.txt; echo $CLI_VAR").stdout
        assert out == "built\ncopied by the cli\nfrom-the-dockerfile\n"
    finally:
        sandbox.kill()

    listed = json.loads(run_e2b_cli(e2b_cli, hearth, "template", "list", "-f", "json"))
    names = [name for t in listed for name in (t.get("aliases") or t.get("names") or [])]
    assert NAME in names

    headers = {"X-API-Key": hearth.api_key}
    with httpx.Client(base_url=hearth.api_url, headers=headers) as api:
        run_e2b_cli(e2b_cli, hearth, "template", "publish", NAME, "-y")
        assert api.get(f"/templates/{NAME}").json()["public"] is True
        run_e2b_cli(e2b_cli, hearth, "template", "unpublish", NAME, "-y")
        assert api.get(f"/templates/{NAME}").json()["public"] is False
    run_e2b_cli(e2b_cli, hearth, "template", "delete", NAME, "-y")
    assert not Template.exists(NAME)
