"""Templates: found by id or alias, visible to their team or, when public, to all."""

from __future__ import annotations

from typing import Any

import pytest

from hearth.store import Conflict, Store, Team, Template


async def _put(store: Store, template_id: str, team: Team | None, **fields: Any) -> Template:
    values: dict[str, Any] = {
        "cpu_count": 2,
        "memory_mb": 512,
        "disk_size_mb": 1024,
        "envd_version": "0.6.13",
    }
    values.update(fields)
    return await store.upsert_template(template_id, team_id=team.id if team else None, **values)


async def test_a_template_is_found_by_id_or_alias(store: Store, team: Team) -> None:
    made = await _put(store, "tpl1", team, aliases=["python", "py"], build_id="b1")
    assert made.aliases == ("py", "python") and made.public is False
    assert (made.build_id, made.build_count, made.spawn_count) == ("b1", 1, 0)
    assert made.created_at == made.updated_at and made.last_spawned_at is None
    for name in ("tpl1", "python", "py"):
        assert await store.get_template(team.id, name) == made
    assert await store.get_template(team.id, "pythons") is None


async def test_private_templates_are_their_teams_only(
    store: Store, team: Team, other_team: Team
) -> None:
    await _put(store, "mine", team, aliases=["my-alias"])
    assert await store.get_template(other_team.id, "mine") is None
    assert await store.get_template(other_team.id, "my-alias") is None
    assert await store.list_templates(other_team.id) == []
    # For telling 403 from 404: it exists, and it is not theirs.
    found = await store.find_template("my-alias")
    assert found is not None and found.team_id == team.id
    assert await store.find_template("nothing") is None


async def test_public_templates_are_visible_to_every_team(
    store: Store, team: Team, other_team: Team
) -> None:
    shared = await _put(store, "shared", team, aliases=["shared-alias"], public=True)
    builtin = await _put(store, "base", None, aliases=["default-base"])
    assert builtin.public is True and builtin.team_id is None
    assert await store.get_template(other_team.id, "shared-alias") == shared
    assert await store.get_template(other_team.id, "default-base") == builtin
    assert await store.list_templates(other_team.id) == []
    listed = await store.list_templates(other_team.id, include_public=True)
    assert {t.template_id for t in listed} == {"shared", "base"}
    assert [t.template_id for t in await store.list_templates(team.id)] == ["shared"]


async def test_updates_keep_what_they_do_not_name(store: Store, team: Team) -> None:
    first = await _put(store, "tpl", team, aliases=["a"], build_id="b1", public=True)
    same_build = await _put(store, "tpl", team, cpu_count=4, build_id="b1")
    assert same_build.aliases == ("a",) and same_build.public is True
    assert (same_build.cpu_count, same_build.build_count) == (4, 1)
    assert same_build.created_at == first.created_at <= same_build.updated_at
    rebuilt = await _put(store, "tpl", team, build_id="b2", aliases=["b", "c"], public=False)
    assert (rebuilt.build_id, rebuilt.build_count) == ("b2", 2)
    assert rebuilt.aliases == ("b", "c") and rebuilt.public is False
    no_build = await _put(store, "tpl", team, aliases=[])
    assert no_build.build_id == "b2" and no_build.aliases == ()
    assert await store.get_template(team.id, "a") is None


async def test_names_cannot_be_taken_twice(store: Store, team: Team, other_team: Team) -> None:
    await _put(store, "tpl1", team, aliases=["python"])
    with pytest.raises(Conflict, match="python"):
        await _put(store, "tpl2", team, aliases=["python"])
    with pytest.raises(Conflict):
        await _put(store, "tpl2", other_team, aliases=["tpl1"])  # another template's id
    with pytest.raises(Conflict):
        await _put(store, "python", team)  # another template's alias as an id
    with pytest.raises(Conflict, match="another team"):
        await _put(store, "tpl1", other_team)
    assert await store.find_template("tpl2") is None  # nothing half-written
    assert (await store.get_template(team.id, "python")).template_id == "tpl1"


async def test_spawns_are_counted(store: Store, team: Team) -> None:
    await _put(store, "tpl", team)
    await store.record_template_spawn("tpl")
    await store.record_template_spawn("tpl")
    spawned = await store.get_template(team.id, "tpl")
    assert spawned.spawn_count == 2 and spawned.last_spawned_at is not None


async def test_a_team_deletes_only_its_own_templates(
    store: Store, team: Team, other_team: Team
) -> None:
    await _put(store, "tpl", team, aliases=["alias"])
    assert not await store.delete_template(other_team.id, "tpl")
    assert await store.delete_template(team.id, "tpl")
    assert await store.find_template("tpl") is None and await store.find_template("alias") is None
    assert not await store.delete_template(team.id, "tpl")
    await _put(store, "other", team, aliases=["alias"])  # the alias is free again
