"""Template builds: their states, their logs paged exactly, and the tags that name them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from hearth import store as hearth_store
from hearth.store import Build, BuildLogEntry, Conflict, NotFound, Store, Team, TemplateTag
from hearth.store._engine import create_engine
from hearth.store._migrate import _config

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


async def _template(store: Store, template_id: str, team: Team | None, **fields: Any) -> None:
    values: dict[str, Any] = {
        "cpu_count": 2,
        "memory_mb": 512,
        "disk_size_mb": 1024,
        "envd_version": "0.6.13",
    }
    values.update(fields)
    await store.upsert_template(template_id, team_id=team.id if team else None, **values)


async def _build(
    store: Store, template_id: str, team: Team | None, *, tags: list[str] | None = None, **fields
) -> Build:
    values: dict[str, Any] = {"cpu_count": 4, "memory_mb": 2048, "disk_size_mb": 4096}
    values.update(fields)
    return await store.create_build(
        template_id,
        build_id=str(uuid.uuid4()),
        team_id=team.id if team else None,
        tags=["default"] if tags is None else tags,
        **values,
    )


def _entries(count: int, *, levels: tuple[str, ...] = ("info",), start: int = 0) -> list:
    return [
        (T0 + timedelta(seconds=start + n), levels[n % len(levels)], f"line {start + n}", None)
        for n in range(count)
    ]


# -- builds --------------------------------------------------------------------------------


async def test_a_new_build_waits(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    build = await _build(store, "tpl", team, tags=["default", "v1", "default"])
    assert build.status == "waiting" and build.template_id == "tpl" and build.team_id == team.id
    assert (build.cpu_count, build.memory_mb, build.disk_size_mb) == (4, 2048, 4096)
    assert build.tags == ("default", "v1")
    assert (build.recipe, build.artifact, build.reason, build.envd_version) == (None,) * 4
    assert build.created_at == build.updated_at and build.created_at.tzinfo is not None
    assert (build.started_at, build.finished_at) == (None, None)
    assert await store.get_build("tpl", build.build_id) == build


async def test_a_build_is_found_only_under_its_template(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    await _template(store, "other", team)
    build = await _build(store, "tpl", team)
    assert await store.get_build("other", build.build_id) is None
    assert await store.get_build("tpl", "no-such-build") is None


async def test_builds_need_their_template_and_a_fresh_id(store: Store, team: Team) -> None:
    with pytest.raises(Conflict):
        await _build(store, "nothing", team)
    await _template(store, "tpl", team)
    build = await _build(store, "tpl", team)
    with pytest.raises(Conflict):
        await store.create_build(
            "tpl",
            build_id=build.build_id,
            team_id=team.id,
            cpu_count=1,
            memory_mb=1,
            disk_size_mb=1,
            tags=[],
        )


async def test_builds_are_listed_newest_first(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    await _template(store, "other", team)
    made = [await _build(store, "tpl", team) for _ in range(3)]
    await _build(store, "other", team)
    listed = await store.list_builds("tpl")
    assert [b.build_id for b in listed] == [b.build_id for b in reversed(made)]
    assert await store.list_builds("nothing") == []


async def test_updates_keep_what_they_do_not_name(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    build = await _build(store, "tpl", team)
    recipe = {"steps": [{"type": "RUN", "args": ["echo hi"]}], "fromImage": "ubuntu:22.04"}
    building = await store.update_build(build.build_id, status="building", recipe=recipe)
    assert building.status == "building" and building.recipe == recipe
    assert building.started_at is not None and building.finished_at is None
    assert building.updated_at >= build.updated_at
    again = await store.update_build(build.build_id, status="building", envd_version="0.7.0")
    assert again.started_at == building.started_at  # set once
    assert (again.recipe, again.envd_version) == (recipe, "0.7.0")
    reason = {"message": "step 1 failed", "step": "1"}
    failed = await store.update_build(build.build_id, status="error", reason=reason)
    assert failed.status == "error" and failed.reason == reason
    assert failed.finished_at is not None and failed.finished_at >= failed.started_at
    assert failed.recipe == recipe and failed.envd_version == "0.7.0"
    assert await store.get_build("tpl", build.build_id) == failed
    # A failed build names nothing: no tag, and the template keeps its build.
    assert await store.list_tags("tpl") == []
    template = await store.get_template(team.id, "tpl")
    assert template is not None and (template.build_id, template.build_count) == (None, 0)


async def test_updates_refuse_unknown_builds_and_states(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    build = await _build(store, "tpl", team)
    with pytest.raises(NotFound):
        await store.update_build("no-such-build", status="building")
    with pytest.raises(LookupError):  # NotFound is one
        await store.update_build("no-such-build")
    with pytest.raises(ValueError, match="status"):
        await store.update_build(build.build_id, status="done")
    assert (await store.get_build("tpl", build.build_id)) == build


async def test_ready_assigns_the_tags_and_becomes_the_templates_build(
    store: Store, team: Team
) -> None:
    await _template(store, "tpl", team, aliases=["py"], build_id="old-build")
    before = await store.get_template(team.id, "tpl")
    assert before is not None and before.build_count == 1
    build = await _build(store, "tpl", team, tags=["default", "v1"])
    await store.update_build(build.build_id, status="building")
    artifact = {"layers": ["sha256:aa", "sha256:bb"], "rootfs": "/var/lib/hearth/x"}
    ready = await store.update_build(
        build.build_id, status="ready", artifact=artifact, envd_version="0.7.1"
    )
    assert ready.status == "ready" and ready.artifact == artifact
    assert ready.finished_at is not None and ready.updated_at == ready.finished_at

    tags = await store.list_tags("tpl")
    assert [(t.tag, t.build_id) for t in tags] == [
        ("default", build.build_id),
        ("v1", build.build_id),
    ]
    assert all(t.created_at == ready.finished_at for t in tags)
    template = await store.get_template(team.id, "py")
    assert template is not None
    assert (template.build_id, template.build_count) == (build.build_id, 2)
    assert (template.cpu_count, template.memory_mb, template.disk_size_mb) == (4, 2048, 4096)
    assert template.envd_version == "0.7.1" and template.aliases == ("py",)
    assert template.updated_at == ready.finished_at and template.created_at == before.created_at
    assert await store.tagged_build("tpl") == ready
    assert await store.tagged_build("tpl", "v1") == ready

    # Ready again (a repeated report) counts nothing twice and moves no tag.
    again = await store.update_build(build.build_id, status="ready")
    assert again.finished_at == ready.finished_at
    assert (await store.get_template(team.id, "tpl")).build_count == 2
    assert await store.list_tags("tpl") == tags


async def test_ready_without_an_envd_version_keeps_the_templates(store: Store, team: Team) -> None:
    await _template(store, "tpl", team, envd_version="0.6.13")
    build = await _build(store, "tpl", team, tags=[])
    await store.update_build(build.build_id, status="ready")
    template = await store.get_template(team.id, "tpl")
    assert template is not None
    assert (template.build_id, template.envd_version) == (build.build_id, "0.6.13")
    assert await store.list_tags("tpl") == []


async def test_the_newest_ready_build_takes_the_tag(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    first = await _build(store, "tpl", team, tags=["default", "v1"])
    second = await _build(store, "tpl", team, tags=["default", "v2"])
    await store.update_build(second.build_id, status="ready")
    await store.update_build(first.build_id, status="ready")  # finished last: it wins
    tags = {t.tag: t.build_id for t in await store.list_tags("tpl")}
    assert tags == {"default": first.build_id, "v1": first.build_id, "v2": second.build_id}
    assert (await store.tagged_build("tpl")).build_id == first.build_id
    assert (await store.tagged_build("tpl", "v2")).build_id == second.build_id
    template = await store.get_template(team.id, "tpl")
    assert template is not None and (template.build_id, template.build_count) == (
        first.build_id,
        2,
    )


async def test_unfinished_builds_are_the_waiting_and_building_ones(
    store: Store, team: Team, other_team: Team
) -> None:
    await _template(store, "tpl", team)
    await _template(store, "theirs", other_team)
    waiting = await _build(store, "tpl", team)
    building = await _build(store, "theirs", other_team)
    ready = await _build(store, "tpl", team)
    failed = await _build(store, "tpl", team)
    await store.update_build(building.build_id, status="building")
    await store.update_build(ready.build_id, status="ready")
    await store.update_build(failed.build_id, status="error", reason={"message": "x"})
    unfinished = await store.unfinished_builds()
    assert [b.build_id for b in unfinished] == [waiting.build_id, building.build_id]
    assert [b.status for b in unfinished] == ["waiting", "building"]


async def test_all_artifacts_are_the_ready_builds(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    await _template(store, "base", None)
    assert await store.all_artifacts() == []
    one = await _build(store, "tpl", team)
    two = await _build(store, "base", None)
    failed = await _build(store, "tpl", team)
    bare = await _build(store, "tpl", team)
    building = await _build(store, "tpl", team)
    await store.update_build(one.build_id, status="ready", artifact={"layers": ["a"]})
    await store.update_build(two.build_id, status="ready", artifact={"layers": ["b", "a"]})
    await store.update_build(failed.build_id, status="error", artifact={"layers": ["c"]})
    await store.update_build(bare.build_id, status="ready")
    await store.update_build(building.build_id, status="building", artifact={"layers": ["d"]})
    assert await store.all_artifacts() == [{"layers": ["a"]}, {"layers": ["b", "a"]}]


# -- logs ----------------------------------------------------------------------------------


async def test_logs_are_numbered_in_the_order_they_were_written(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    build = await _build(store, "tpl", team)
    assert await store.build_logs(build.build_id) == []
    assert await store.count_build_logs(build.build_id) == 0
    await store.append_build_logs(
        build.build_id,
        [(T0, "info", "pulling", "base"), (T0, "debug", "layer 1", "base")],
    )
    await store.append_build_logs(build.build_id, [])
    await store.append_build_logs(build.build_id, [(T0 + timedelta(seconds=1), "warn", "", None)])
    logs = await store.build_logs(build.build_id)
    assert logs == [
        BuildLogEntry(0, T0, "info", "pulling", "base"),
        BuildLogEntry(1, T0, "debug", "layer 1", "base"),
        BuildLogEntry(2, T0 + timedelta(seconds=1), "warn", "", None),
    ]
    assert all(e.timestamp.tzinfo is not None for e in logs)
    assert await store.count_build_logs(build.build_id) == 3
    assert [e.seq for e in await store.build_logs(build.build_id, direction="backward")] == [
        2,
        1,
        0,
    ]


async def test_log_pages_are_exact(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    build = await _build(store, "tpl", team)
    other = await _build(store, "tpl", team)
    await store.append_build_logs(build.build_id, _entries(120))
    await store.append_build_logs(other.build_id, _entries(7))
    await store.append_build_logs(build.build_id, _entries(130, start=120))
    assert await store.count_build_logs(build.build_id) == 250
    assert await store.count_build_logs(other.build_id) == 7

    pages = []
    offset = 0
    while True:  # as the SDK polls: growing offsets until an empty page
        page = await store.build_logs(build.build_id, offset=offset, limit=100)
        pages.append(page)
        if not page:
            break
        offset += len(page)
    assert [len(p) for p in pages] == [100, 100, 50, 0]
    seen = [e for p in pages for e in p]
    assert [e.seq for e in seen] == list(range(250))
    assert [e.message for e in seen] == [f"line {n}" for n in range(250)]

    backward = await store.build_logs(build.build_id, offset=10, limit=5, direction="backward")
    assert [e.seq for e in backward] == [239, 238, 237, 236, 235]
    assert await store.build_logs(build.build_id, offset=250) == []
    assert await store.build_logs(build.build_id, limit=0) == []
    assert await store.build_logs("no-such-build") == []


async def test_a_level_keeps_it_and_the_more_severe(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    build = await _build(store, "tpl", team)
    levels = ("debug", "info", "warn", "error")
    await store.append_build_logs(build.build_id, _entries(400, levels=levels))

    def levels_of(entries: list[BuildLogEntry]) -> set[str]:
        return {e.level for e in entries}

    for minimum, kept in [("debug", 400), ("info", 300), ("warn", 200), ("error", 100)]:
        everything = await store.build_logs(build.build_id, limit=1000, level=minimum)
        assert len(everything) == kept
        assert levels_of(everything) == set(levels[levels.index(minimum) :])
        # The offset counts the filtered entries: pages of the filtered log, no gaps.
        pages, offset = [], 0
        while page := await store.build_logs(
            build.build_id, offset=offset, limit=64, level=minimum
        ):
            pages.append(page)
            offset += len(page)
        assert [e for p in pages for e in p] == everything
        assert [len(p) for p in pages] == [64] * (kept // 64) + [kept % 64]

    warn_page = await store.build_logs(build.build_id, offset=100, limit=100, level="warn")
    assert [e.seq for e in warn_page] == [n for n in range(200, 400) if n % 4 >= 2]
    newest_errors = await store.build_logs(
        build.build_id, limit=3, level="error", direction="backward"
    )
    assert [e.seq for e in newest_errors] == [399, 395, 391]
    assert len(await store.build_logs(build.build_id, level=None, limit=1000)) == 400


async def test_logs_refuse_what_they_cannot_order(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    build = await _build(store, "tpl", team)
    with pytest.raises(ValueError, match="level"):
        await store.append_build_logs(
            build.build_id, [(T0, "info", "a", None), (T0, "x", "", None)]
        )
    with pytest.raises(ValueError, match="naive"):
        await store.append_build_logs(build.build_id, [(datetime(2025, 1, 1), "info", "", None)])
    with pytest.raises(NotFound):
        await store.append_build_logs("no-such-build", _entries(1))
    assert await store.count_build_logs(build.build_id) == 0  # nothing half-written
    with pytest.raises(ValueError, match="level"):
        await store.build_logs(build.build_id, level="verbose")
    with pytest.raises(ValueError, match="direction"):
        await store.build_logs(build.build_id, direction="sideways")
    with pytest.raises(ValueError):
        await store.build_logs(build.build_id, offset=-1)


async def test_concurrent_appends_keep_the_numbers_unique(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    build = await _build(store, "tpl", team)
    writers, batches, batch = 8, 5, 7

    async def write(writer: int) -> None:
        for b in range(batches):
            entries = [(T0, "info", f"w{writer} b{b} e{n}", None) for n in range(batch)]
            await store.append_build_logs(build.build_id, entries)

    await asyncio.gather(*(write(w) for w in range(writers)))
    total = writers * batches * batch
    logs = await store.build_logs(build.build_id, limit=total + 1)
    assert [e.seq for e in logs] == list(range(total))
    assert await store.count_build_logs(build.build_id) == total
    # Each append's entries stay together and in order.
    for start in range(0, total, batch):
        messages = [e.message for e in logs[start : start + batch]]
        prefix = messages[0].rsplit(" ", 1)[0]
        assert messages == [f"{prefix} e{n}" for n in range(batch)]


async def test_concurrent_appends_from_two_stores(database_url: str) -> None:
    async with await hearth_store.open(database_url) as first:
        team = await first.create_team("t")
        await _template(first, "tpl", team)
        build = await _build(first, "tpl", team)
        async with await hearth_store.open(database_url) as second:
            await asyncio.gather(
                *(
                    s.append_build_logs(build.build_id, _entries(10, start=10 * n))
                    for n, s in enumerate([first, second] * 6)
                )
            )
        assert await first.count_build_logs(build.build_id) == 120
        seqs = [e.seq for e in await first.build_logs(build.build_id, limit=500)]
        assert seqs == list(range(120))


# -- tags ----------------------------------------------------------------------------------


async def test_tags_are_set_moved_and_removed(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    await _template(store, "other", team)
    one = await _build(store, "tpl", team)
    two = await _build(store, "tpl", team)
    assert await store.list_tags("tpl") == []
    assert await store.get_tag("tpl", "v1") is None

    set_one = await store.set_tags("tpl", one.build_id, ["v1", "stable", "v1"])
    assert [(t.template_id, t.tag, t.build_id) for t in set_one] == [
        ("tpl", "v1", one.build_id),
        ("tpl", "stable", one.build_id),
    ]
    assert all(isinstance(t, TemplateTag) and t.created_at.tzinfo for t in set_one)
    assert await store.list_tags("tpl") == sorted(set_one, key=lambda t: t.tag)
    assert await store.get_tag("tpl", "v1") == set_one[0]

    moved = await store.set_tags("tpl", two.build_id, ["stable"])  # the newest wins
    assert await store.get_tag("tpl", "stable") == moved[0]
    assert moved[0].created_at >= set_one[1].created_at
    assert {t.tag: t.build_id for t in await store.list_tags("tpl")} == {
        "stable": two.build_id,
        "v1": one.build_id,
    }
    assert await store.set_tags("tpl", two.build_id, []) == []
    assert await store.list_tags("other") == []  # tags are per template

    assert await store.remove_tags("tpl", ["v1", "nothing"]) == 1
    assert await store.remove_tags("tpl", []) == 0
    assert await store.remove_tags("other", ["stable"]) == 0
    assert [t.tag for t in await store.list_tags("tpl")] == ["stable"]
    with pytest.raises(Conflict):
        await store.set_tags("no-such-template", one.build_id, ["v1"])


async def test_a_tag_names_a_build_only_when_it_is_ready(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    await _template(store, "other", team)
    ready = await _build(store, "tpl", team, tags=["default"])
    await store.update_build(ready.build_id, status="ready")
    pending = await _build(store, "tpl", team)
    failed = await _build(store, "tpl", team)
    await store.update_build(failed.build_id, status="error")
    foreign = await _build(store, "other", team)
    await store.update_build(foreign.build_id, status="ready")

    assert (await store.tagged_build("tpl")).build_id == ready.build_id
    await store.set_tags("tpl", pending.build_id, ["next"])
    await store.set_tags("tpl", failed.build_id, ["broken"])
    await store.set_tags("tpl", foreign.build_id, ["theirs"])  # another template's build
    await store.set_tags("tpl", "unknown-build", ["gone"])
    for tag in ("next", "broken", "theirs", "gone", "nothing"):
        assert await store.tagged_build("tpl", tag) is None
    await store.update_build(pending.build_id, status="ready")  # its own tags: ["default"]
    assert (await store.tagged_build("tpl", "next")).build_id == pending.build_id
    assert (await store.tagged_build("tpl")).build_id == pending.build_id


# -- deleting a template -------------------------------------------------------------------


async def test_deleting_a_template_deletes_its_builds_logs_and_tags(
    store: Store, team: Team, other_team: Team
) -> None:
    await _template(store, "tpl", team, aliases=["py"])
    await _template(store, "keep", team)
    first = await _build(store, "tpl", team, tags=["default", "v1"])
    second = await _build(store, "tpl", team)
    plain = await _build(store, "tpl", team)
    kept = await _build(store, "keep", team)
    await store.update_build(first.build_id, status="ready", artifact={"layers": ["a"]})
    await store.update_build(second.build_id, status="error", artifact={"layers": ["b"]})
    await store.update_build(kept.build_id, status="ready", artifact={"layers": ["k"]})
    for build in (first, second, plain, kept):
        await store.append_build_logs(build.build_id, _entries(3))
    await store.set_tags("keep", kept.build_id, ["default"])

    assert await store.delete_template_with_builds(other_team.id, "tpl") is None
    assert await store.delete_template_with_builds(team.id, "nothing") is None
    assert await store.count_build_logs(first.build_id) == 3  # nothing touched

    artifacts = await store.delete_template_with_builds(team.id, "tpl")
    assert artifacts == [{"layers": ["a"]}, {"layers": ["b"]}]
    assert await store.find_template("tpl") is None and await store.find_template("py") is None
    assert await store.list_builds("tpl") == []
    assert await store.list_tags("tpl") == []
    for build in (first, second, plain):
        assert await store.count_build_logs(build.build_id) == 0
        assert await store.get_build("tpl", build.build_id) is None
    assert await store.unfinished_builds() == []
    assert await store.all_artifacts() == [{"layers": ["k"]}]
    # The other template keeps everything.
    assert [b.build_id for b in await store.list_builds("keep")] == [kept.build_id]
    assert await store.count_build_logs(kept.build_id) == 3
    assert (await store.tagged_build("keep")).build_id == kept.build_id
    assert await store.delete_template_with_builds(team.id, "tpl") is None

    # The id, its alias and its tags are free again.
    await _template(store, "tpl", team, aliases=["py"])
    assert await store.list_tags("tpl") == []


async def test_delete_template_still_answers_yes_or_no(store: Store, team: Team) -> None:
    await _template(store, "tpl", team)
    build = await _build(store, "tpl", team)
    await store.append_build_logs(build.build_id, _entries(2))
    assert await store.delete_template(team.id, "tpl") is True
    assert await store.delete_template(team.id, "tpl") is False
    assert await store.count_build_logs(build.build_id) == 0


async def test_a_build_finishing_while_its_template_is_deleted(store: Store, team: Team) -> None:
    for n in range(10):
        await _template(store, f"tpl{n}", team)
        build = await _build(store, f"tpl{n}", team)
        await store.append_build_logs(build.build_id, _entries(2))
        finished, deleted, logged = await asyncio.gather(
            store.update_build(build.build_id, status="ready", artifact={"layers": [n]}),
            store.delete_template_with_builds(team.id, f"tpl{n}"),
            store.append_build_logs(build.build_id, _entries(2)),
            return_exceptions=True,
        )
        # Either order is fine; neither fails any other way, and nothing is left behind.
        assert isinstance(finished, Build | NotFound), finished
        assert deleted in ([], [{"layers": [n]}]), deleted
        assert logged is None or isinstance(logged, NotFound), logged
        assert await store.count_build_logs(build.build_id) == 0
        assert await store.list_tags(f"tpl{n}") == []
        assert await store.find_template(f"tpl{n}") is None


# -- the migration ---------------------------------------------------------------------------


async def test_the_migration_keeps_existing_templates(database_url: str) -> None:
    engine = await create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(_config(sync), "0002"))
            await conn.execute(
                sa.text("INSERT INTO teams (id, name, created_at) VALUES ('t1', 'old', :at)"),
                {"at": T0},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO templates (template_id, team_id, cpu_count, memory_mb,"
                    " disk_size_mb, envd_version, build_id, public, created_at, updated_at,"
                    " build_count, spawn_count) VALUES ('old', 't1', 2, 512, 1024, '0.6.13',"
                    " 'b0', false, :at, :at, 1, 0)"
                ),
                {"at": T0},
            )
    finally:
        await engine.dispose()
    async with await hearth_store.open(database_url) as store:
        build = await store.create_build(
            "old",
            build_id="b1",
            team_id="t1",
            cpu_count=2,
            memory_mb=512,
            disk_size_mb=1024,
            tags=["default"],
        )
        await store.update_build(build.build_id, status="ready")
        template = await store.get_template("t1", "old")
        assert template is not None and (template.build_id, template.build_count) == ("b1", 2)
        assert (await store.tagged_build("old")).build_id == "b1"
        assert await store.delete_template_with_builds("t1", "old") == []
