"""The builder through a real node: steps run in container build sandboxes, each step's
changes become a cached layer, and a sandbox of the result sees what the steps made."""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from pathlib import Path

import pytest

from hearth.node.guest import envd_client
from hearth.node.interface import BuildFailed, BuildRequest, SandboxSpec
from hearth.template.recipe import Base, Recipe, Step

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: container sandboxes"),
]


class Log:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str | None]] = []

    def __call__(self, level: str, message: str, step: str | None) -> None:
        self.entries.append((level, message, step))

    def text(self) -> str:
        return "\n".join(m for _, m, _ in self.entries)


@pytest.fixture
async def node(tmp_path_factory):
    from hearth.node.local import LocalNode

    data = Path(f"/var/tmp/hearth-build-test-{uuid.uuid4().hex[:8]}")
    data.mkdir(mode=0o755)
    async with LocalNode(data / "node", runtime="container") as node:
        yield node
    import shutil

    shutil.rmtree(data, ignore_errors=True)


def _request(recipe: Recipe, parent=None, files=None, team: str = "team-a") -> BuildRequest:
    return BuildRequest("tpl", uuid.uuid4().hex, team, recipe, parent=parent, files=files or {})


async def _run(node, artifact, command: str, user: str = "user") -> envd_client.Finished:
    sandbox_id = uuid.uuid4().hex[:20]
    address = await node.create(SandboxSpec(sandbox_id, "tpl", 1, 256, artifact=artifact))
    try:
        return await envd_client.run(
            f"http://{address.host}:{envd_client.ENVD_PORT}", ["/bin/sh", "-c", command], user=user
        )
    finally:
        await node.kill(sandbox_id)


async def test_steps_become_layers_a_sandbox_sees(node) -> None:
    busybox = await node.builtin("busybox")
    log = Log()
    marker = uuid.uuid4().hex
    recipe = Recipe(
        base=Base(template="busybox"),
        steps=(
            Step(
                "RUN",
                (
                    f"mkdir -p /opt/app && echo {marker} > /opt/app/kept && touch /opt/app/gone",
                    "root",
                ),
            ),
            Step("ENV", ("GREETING", "hello $USER_NAME", "USER_NAME", "x")),
            Step("WORKDIR", ("/opt/app",)),
            Step("RUN", ("rm /opt/app/gone && id -un > /tmp/whoami", "root")),
        ),
    )
    artifact = await node.build(_request(recipe, parent=busybox), log)
    assert len(artifact.layers) == len(busybox.layers) + 3  # ENV makes no layer
    assert artifact.workdir == "/opt/app" and artifact.user == "user"
    assert artifact.env["GREETING"] == "hello "  # expanded when set: USER_NAME came after
    done = await _run(node, artifact, "cat /opt/app/kept; ls /opt/app; cat /tmp/whoami; pwd")
    assert done.exit_code == 0
    assert done.output.split() == [marker, "kept", "root", "/opt/app"]
    # Every layer belongs to the host's low ids, so any sandbox can map it.
    for layer in node.layers.paths(artifact.layers[len(busybox.layers) :]):
        for path in layer.rglob("*"):
            assert path.lstat().st_uid < 65536, path


async def test_a_rebuild_takes_every_step_from_the_cache(node) -> None:
    busybox = await node.builtin("busybox")
    recipe = Recipe(
        base=Base(template="busybox"),
        steps=(Step("RUN", (f"echo {uuid.uuid4().hex} > /tmp/x", "root")),),
    )
    first = await node.build(_request(recipe, parent=busybox), Log())
    log = Log()
    again = await node.build(_request(recipe, parent=busybox), log)
    assert again == first
    assert "(cached)" in log.text()
    other_team = Log()
    await node.build(_request(recipe, parent=busybox, team="team-b"), other_team)
    assert "(cached)" not in other_team.text()  # teams never share a step's cache entry


async def test_a_failing_step_names_its_number_and_leaves_no_layer(node) -> None:
    busybox = await node.builtin("busybox")
    before = set(os.listdir(node.layers.root))
    recipe = Recipe(
        base=Base(template="busybox"),
        steps=(Step("ENV", ("A", "1")), Step("RUN", ("echo oops >&2; exit 3",))),
    )
    with pytest.raises(BuildFailed) as failed:
        await node.build(_request(recipe, parent=busybox), Log())
    assert failed.value.step == "2"
    assert "code 3" in str(failed.value) and "oops" in str(failed.value)
    assert set(os.listdir(node.layers.root)) == before


async def test_copy_puts_uploaded_files_in_place_with_owner_and_mode(node, tmp_path) -> None:
    busybox = await node.builtin("busybox")
    archive = tmp_path / "context.tar"
    with tarfile.open(archive, "w:gz") as tar:
        for name, content in (("app/main.sh", b"echo main\n"), ("app/lib/x.txt", b"x\n")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    digest = uuid.uuid4().hex
    recipe = Recipe(
        base=Base(template="busybox"),
        steps=(Step("COPY", ("app", "/srv/app", "", "0750"), files_hash=digest),),
    )
    artifact = await node.build(_request(recipe, parent=busybox, files={digest: archive}), Log())
    done = await _run(
        node, artifact, "stat -c '%U %a %n' /srv/app/main.sh /srv/app/lib/x.txt", user="root"
    )
    assert done.output.split("\n")[:2] == [
        "user 750 /srv/app/main.sh",
        "user 750 /srv/app/lib/x.txt",
    ]


async def test_the_start_command_runs_and_must_become_ready(node) -> None:
    busybox = await node.builtin("busybox")
    ready = Recipe(
        base=Base(template="busybox"),
        start_cmd="echo started > /tmp/started; sleep 1000",
        ready_cmd="test -f /tmp/started",
    )
    artifact = await node.build(_request(ready, parent=busybox), Log())
    done = await _run(node, artifact, "cat /tmp/started; ps | grep -q '[s]leep 1000' && echo up")
    assert done.output.split() == ["started", "up"]
    failing = Recipe(base=Base(template="busybox"), start_cmd="exit 7", ready_cmd="false")
    with pytest.raises(BuildFailed) as failed:
        await node.build(_request(failing, parent=busybox), Log())
    assert failed.value.step == "finalize" and "code 7" in str(failed.value)


async def test_a_cold_resume_starts_the_templates_start_command_again(node) -> None:
    """A filesystem-only pause keeps files, not processes: the resume boots envd again
    and runs the start command as a create does, from what the sandbox's record kept
    (the resume's own spec need not name the template's build)."""
    busybox = await node.builtin("busybox")
    recipe = Recipe(
        base=Base(template="busybox"),
        start_cmd="echo run >> /tmp/starts; exec sleep 100000",
        ready_cmd="test -s /tmp/starts",
    )
    artifact = await node.build(_request(recipe, parent=busybox), Log())
    sandbox_id = uuid.uuid4().hex[:20]
    await node.create(SandboxSpec(sandbox_id, "tpl", 1, 256, artifact=artifact))
    try:
        assert await node.pause(sandbox_id, memory=False) is False
        address = await node.resume(SandboxSpec(sandbox_id, "tpl", 1, 256))
        done = await envd_client.run(
            f"http://{address.host}:{envd_client.ENVD_PORT}",
            ["/bin/sh", "-c", "cat /tmp/starts; ps | grep -c '[s]leep 100000'"],
        )
        assert done.output.split() == ["run", "run", "1"]
    finally:
        await node.kill(sandbox_id)


async def test_a_user_name_that_is_not_one_fails_its_step(node) -> None:
    busybox = await node.builtin("busybox")
    recipe = Recipe(base=Base(template="busybox"), steps=(Step("USER", ("; exit 1",)),))
    with pytest.raises(BuildFailed) as failed:
        await node.build(_request(recipe, parent=busybox), Log())
    assert failed.value.step == "1" and "not a user name" in str(failed.value)


async def test_copy_follows_e2b_not_docker(node, tmp_path) -> None:
    """The SDK uploads what a glob matched; E2B's builder puts `src` up to its glob
    (here the directory `folder`) at `dest`, and a single file at `dest` exactly."""
    busybox = await node.builtin("busybox")
    archive = tmp_path / "context.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("folder/a.txt", "folder/b.txt", "one.txt"):
            info = tarfile.TarInfo(name)
            info.size = len(name)
            tar.addfile(info, io.BytesIO(name.encode()))
    recipe = Recipe(
        base=Base(template="busybox"),
        steps=(
            Step("COPY", ("folder/*.txt", "folder", "", ""), files_hash="h1"),
            Step("COPY", ("one.txt", "/opt/x/renamed.txt", "root:root", "0600"), files_hash="h1"),
            Step("COPY", ("one.txt", "/dest/", "", ""), files_hash="h1"),
        ),
    )
    artifact = await node.build(_request(recipe, parent=busybox, files={"h1": archive}), Log())
    done = await _run(
        node,
        artifact,
        "cat folder/a.txt; echo; stat -c '%U %a' /opt/x/renamed.txt; cat /dest/one.txt; echo;"
        " ls -a /tmp",
        user="root",
    )
    lines = done.output.split("\n")
    assert lines[:3] == ["folder/a.txt", "root 600", "one.txt"]
    assert not any(".hearth-copy" in line for line in lines)  # nothing of the upload stays
