"""Sandboxes: records, team isolation, filters, the cursor, states and timeouts."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from hearth.store import Conflict, InvalidCursor, Sandbox, SandboxState, Store, Team

T0 = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
RUNNING, PAUSED, KILLED = SandboxState.RUNNING, SandboxState.PAUSED, SandboxState.KILLED


def _id(n: int) -> str:
    return f"sbx{n:017d}"


async def _add(store: Store, team: Team, sandbox_id: str, **fields: Any) -> Sandbox:
    started_at = fields.pop("started_at", T0)
    values: dict[str, Any] = {
        "template_id": "base",
        "end_at": started_at + timedelta(minutes=5),
        "cpu_count": 2,
        "memory_mb": 512,
        "disk_size_mb": 1024,
        "envd_version": "0.6.13",
    }
    values.update(fields)
    return await store.insert_sandbox(
        sandbox_id=sandbox_id, team_id=team.id, started_at=started_at, **values
    )


async def _all_pages(store: Store, team: Team, limit: int, **filters: Any) -> list[list[str]]:
    pages, token = [], None
    while True:
        page, token = await store.list_sandboxes(team.id, limit=limit, next_token=token, **filters)
        pages.append([s.sandbox_id for s in page])
        if token is None:
            return pages
        assert len(page) == limit  # a page before the last is full
        assert len(pages) < 100


async def test_a_sandbox_reads_back_as_written(store: Store, team: Team) -> None:
    network = {"allowOut": ["1.1.1.1"], "denyOut": ["0.0.0.0/0"], "allowPublicTraffic": False}
    written = await _add(
        store,
        team,
        "abc123def456ghi789jk",
        alias="my-template",
        client_id="client",
        metadata={"user": "ada", "purpose": "test run"},
        envd_access_token="envd-token",
        traffic_access_token="traffic-token",
        allow_internet=False,
        auto_pause=True,
        auto_resume=True,
        network=network,
        node_id="node-1",
        runtime="container",
        # an aware time in another zone is stored as the same instant
        started_at=datetime(2025, 6, 1, 19, 30, 0, 1, tzinfo=timezone(timedelta(hours=5.5))),
    )
    read = await store.get_sandbox(team.id, "abc123def456ghi789jk")
    assert read == written
    assert read.state is RUNNING and read.killed_at is None
    assert read.metadata == {"user": "ada", "purpose": "test run"}
    assert read.network == network
    assert read.envd_access_token == "envd-token" and read.traffic_access_token == "traffic-token"
    assert (read.allow_internet, read.auto_pause, read.auto_resume) == (False, True, True)
    assert read.started_at == datetime(2025, 6, 1, 14, 0, 0, 1, tzinfo=UTC)
    assert read.started_at.tzinfo is UTC and read.end_at.tzinfo is UTC


async def test_naive_datetimes_are_refused(store: Store, team: Team) -> None:
    with pytest.raises(ValueError, match="naive"):
        await _add(store, team, _id(1), started_at=datetime(2025, 1, 1))


async def test_ids_are_unique(store: Store, team: Team) -> None:
    await _add(store, team, _id(1))
    with pytest.raises(Conflict):
        await _add(store, team, _id(1))


async def test_a_team_cannot_reach_another_teams_sandboxes(
    store: Store, team: Team, other_team: Team
) -> None:
    await _add(store, team, _id(1), metadata={"k": "v"})
    assert await store.get_sandbox(other_team.id, _id(1)) is None
    assert await store.list_sandboxes(other_team.id) == ([], None)
    assert await store.list_sandboxes(other_team.id, metadata={"k": "v"}) == ([], None)
    assert await store.count_running(other_team.id) == 0
    later = T0 + timedelta(hours=1)
    assert await store.set_sandbox_state(_id(1), KILLED, team_id=other_team.id) is None
    assert await store.set_end_at(_id(1), later, team_id=other_team.id) is None
    assert await store.set_sandbox_network(_id(1), {}, team_id=other_team.id) is None
    assert await store.sandbox_events(other_team.id, _id(1)) == []
    mine = await store.get_sandbox(team.id, _id(1))
    assert mine is not None and mine.state is RUNNING and mine.end_at < later
    assert await store.count_running(team.id) == 1


async def test_list_by_state(store: Store, team: Team) -> None:
    await _add(store, team, _id(1), metadata={"a": "1"})
    await _add(store, team, _id(2), state=PAUSED)
    await _add(store, team, _id(3))  # no metadata: still listed by state
    await _add(store, team, _id(4), state=KILLED)

    async def ids(**filters: Any) -> set[str]:
        page, token = await store.list_sandboxes(team.id, **filters)
        assert token is None
        return {s.sandbox_id for s in page}

    assert await ids() == {_id(1), _id(2), _id(3)}  # killed ones disappear
    assert await ids(states=[RUNNING]) == {_id(1), _id(3)}
    assert await ids(states=["paused"]) == {_id(2)}
    assert await ids(states=[]) == set()
    assert await store.count_running(team.id) == 2


SPECIAL = [
    "b c",
    "with 'single' and \"double\" quotes",
    "a=b&c=d",
    "100% _under_ %s",
    "$.path[0].x",
    "back\\slash",
    "ünïcödé ✓ 雪",
    "",
]


@pytest.mark.parametrize("text", SPECIAL)
async def test_metadata_filter_matches_any_text_exactly(
    store: Store, team: Team, text: str
) -> None:
    await _add(store, team, _id(1), metadata={text: text, "other": "x"})
    await _add(store, team, _id(2), metadata={text: text + " "})  # near miss on the value
    await _add(store, team, _id(3), metadata={text + "x": text})  # near miss on the key
    await _add(store, team, _id(4), metadata={"other": "x"})

    page, _ = await store.list_sandboxes(team.id, metadata={text: text})
    assert [s.sandbox_id for s in page] == [_id(1)]
    assert await store.count_running(team.id, metadata={text: text}) == 1


async def test_metadata_filter_needs_every_pair(store: Store, team: Team) -> None:
    await _add(store, team, _id(1), metadata={"user": "ada", "run": "1"})
    await _add(store, team, _id(2), metadata={"user": "ada", "run": "2"})
    await _add(store, team, _id(3), metadata={"user": "bob", "run": "1"}, state=PAUSED)

    async def ids(metadata: dict[str, str]) -> list[str]:
        page, _ = await store.list_sandboxes(team.id, metadata=metadata)
        return sorted(s.sandbox_id for s in page)

    assert await ids({"user": "ada"}) == [_id(1), _id(2)]
    assert await ids({"user": "ada", "run": "1"}) == [_id(1)]
    assert await ids({"run": "1"}) == [_id(1), _id(3)]
    assert await ids({"user": "ada", "run": "3"}) == []
    assert await ids({"missing": ""}) == []
    assert await ids({}) == [_id(1), _id(2), _id(3)]
    assert await store.count_running(team.id, metadata={"run": "1"}) == 1


async def test_template_and_start_filters(store: Store, team: Team) -> None:
    await _add(store, team, _id(1), template_id="tpl1", alias="python")
    await _add(store, team, _id(2), template_id="tpl2", started_at=T0 + timedelta(seconds=1))
    await _add(store, team, _id(3), template_id="tpl1", alias="python", state=PAUSED)

    async def ids(**filters: Any) -> list[str]:
        page, _ = await store.list_sandboxes(team.id, **filters)
        return sorted(s.sandbox_id for s in page)

    assert await ids(template="tpl1") == [_id(1), _id(3)]
    assert await ids(template="python") == [_id(1), _id(3)]
    assert await ids(template="tpl2") == [_id(2)]
    assert await ids(template="nope") == []
    assert await ids(started_after=T0 + timedelta(seconds=1)) == [_id(2)]  # inclusive
    assert await ids(started_after=T0) == [_id(1), _id(2), _id(3)]
    assert await store.count_running(team.id, template="python") == 1
    assert await store.count_running(team.id, started_after=T0 + timedelta(microseconds=1)) == 1


async def test_pages_walk_newest_first_without_gaps_or_repeats(store: Store, team: Team) -> None:
    rng = random.Random(7)
    # 23 sandboxes over 6 distinct start times, so ties are broken by id; mixed states.
    sandboxes = []
    for n in rng.sample(range(1000), 23):
        started = T0 + timedelta(milliseconds=rng.randrange(6))
        state = rng.choice([RUNNING, PAUSED])
        sandboxes.append(await _add(store, team, _id(n), started_at=started, state=state))
    await _add(store, team, _id(5000), state=KILLED)
    newest_first = [
        s.sandbox_id
        for s in sorted(sandboxes, key=lambda s: (-s.started_at.timestamp(), s.sandbox_id))
    ]

    for limit in (1, 5, 23, 100):
        pages = await _all_pages(store, team, limit)
        assert [i for page in pages for i in page] == newest_first
        assert len(pages) == max(1, -(-23 // limit))

    oldest_first = await _all_pages(store, team, 4, order="asc")
    assert [i for page in oldest_first for i in page] == newest_first[::-1]


async def test_the_last_page_has_no_token(store: Store, team: Team) -> None:
    for n in range(3):
        await _add(store, team, _id(n), started_at=T0 + timedelta(seconds=n))
    assert await _all_pages(store, team, 1) == [[_id(2)], [_id(1)], [_id(0)]]
    assert await _all_pages(store, team, 3) == [[_id(2), _id(1), _id(0)]]
    page, token = await store.list_sandboxes(team.id)  # default limit: 100
    assert len(page) == 3 and token is None


async def test_pages_stay_full_under_a_filter(store: Store, team: Team) -> None:
    # Matching sandboxes are interleaved with others: every page but the last is full.
    for n in range(30):
        tag = "yes" if n % 3 == 0 else "no"
        await _add(store, team, _id(n), metadata={"m": tag}, started_at=T0 + timedelta(seconds=n))
    pages = await _all_pages(store, team, 4, metadata={"m": "yes"})
    assert [i for page in pages for i in page] == [_id(n) for n in range(27, -1, -3)]
    assert [len(page) for page in pages] == [4, 4, 2]


async def test_a_page_survives_sandboxes_started_after_its_token(store: Store, team: Team) -> None:
    for n in range(4):
        await _add(store, team, _id(n), started_at=T0 + timedelta(seconds=n))
    first, token = await store.list_sandboxes(team.id, limit=2)
    await _add(store, team, _id(9), started_at=T0 + timedelta(seconds=9))
    second, token = await store.list_sandboxes(team.id, limit=2, next_token=token)
    assert [s.sandbox_id for s in first + second] == [_id(3), _id(2), _id(1), _id(0)]
    assert token is None


async def test_the_cursor_is_shaped_as_infra_shapes_it(store: Store, team: Team) -> None:
    import base64

    await _add(store, team, _id(1), started_at=T0)
    await _add(store, team, _id(2), started_at=T0 - timedelta(seconds=1))
    _, token = await store.list_sandboxes(team.id, limit=1)
    assert base64.urlsafe_b64decode(token).decode() == f"2025-06-01T12:00:00.123456Z__{_id(1)}"
    _, token = await store.list_sandboxes(team.id, limit=1, order="asc")
    decoded = base64.urlsafe_b64decode(token).decode()
    assert decoded == f"2025-06-01T11:59:59.123456Z__{_id(2)}__asc"


@pytest.mark.parametrize(
    "token",
    ["not base64!", "YWJj", "", "MjAyNS0wNi0wMVQxMjowMDowMFpfX2FiY19fZGVzYw=="],
)
async def test_foreign_tokens_are_refused(store: Store, team: Team, token: str) -> None:
    await _add(store, team, _id(1))
    if not token:  # an empty token is no token
        assert (await store.list_sandboxes(team.id, next_token=token))[1] is None
        return
    with pytest.raises(InvalidCursor):
        await store.list_sandboxes(team.id, next_token=token)


async def test_a_token_is_for_one_order(store: Store, team: Team) -> None:
    await _add(store, team, _id(1), started_at=T0)
    await _add(store, team, _id(2), started_at=T0 + timedelta(seconds=1))
    _, desc_token = await store.list_sandboxes(team.id, limit=1)
    with pytest.raises(InvalidCursor):
        await store.list_sandboxes(team.id, limit=1, next_token=desc_token, order="asc")


@pytest.mark.parametrize("limit", [0, -1, 101])
async def test_limits_are_bounded(store: Store, team: Team, limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.list_sandboxes(team.id, limit=limit)


async def test_state_changes_are_conditional_and_killed_is_final(store: Store, team: Team) -> None:
    await _add(store, team, _id(1))
    paused = await store.set_sandbox_state(_id(1), PAUSED, team_id=team.id, expected=[RUNNING])
    assert paused is not None and paused.state is PAUSED
    # A second pause finds it no longer running.
    assert await store.set_sandbox_state(_id(1), PAUSED, expected=[RUNNING]) is None
    end = T0 + timedelta(hours=2)
    resumed = await store.set_sandbox_state(
        _id(1), RUNNING, expected=[PAUSED], end_at=end, node_id="node-2"
    )
    assert resumed is not None
    assert (resumed.state, resumed.end_at, resumed.node_id) == (RUNNING, end, "node-2")
    killed = await store.set_sandbox_state(_id(1), KILLED)
    assert killed is not None and killed.state is KILLED and killed.killed_at is not None
    assert await store.set_sandbox_state(_id(1), RUNNING) is None
    assert await store.set_sandbox_state(_id(1), KILLED, expected=[KILLED]) is None
    assert await store.get_sandbox(team.id, _id(1)) is None
    kept = await store.get_sandbox(team.id, _id(1), include_killed=True)
    assert kept == killed
    assert await store.set_sandbox_state("nope", KILLED) is None


async def test_timeouts_shorten_or_only_extend(store: Store, team: Team) -> None:
    end = T0 + timedelta(minutes=5)
    await _add(store, team, _id(1), end_at=end)
    earlier, later = end - timedelta(minutes=4), end + timedelta(minutes=4)

    shortened = await store.set_end_at(_id(1), earlier, team_id=team.id)
    assert shortened is not None and shortened.end_at == earlier
    not_shortened = await store.set_end_at(_id(1), earlier - timedelta(seconds=1), only_extend=True)
    assert not_shortened is not None and not_shortened.end_at == earlier
    extended = await store.set_end_at(_id(1), later, only_extend=True)
    assert extended is not None and extended.end_at == later

    await store.set_sandbox_state(_id(1), KILLED)
    assert await store.set_end_at(_id(1), later + timedelta(hours=1)) is None


async def test_expired_sandboxes_are_the_running_ones_past_their_end(
    store: Store, team: Team, other_team: Team
) -> None:
    now = T0 + timedelta(hours=1)
    await _add(store, team, _id(1), end_at=now - timedelta(minutes=2))
    await _add(store, other_team, _id(2), end_at=now - timedelta(minutes=1))
    await _add(store, team, _id(3), end_at=now)  # exactly now: expired
    await _add(store, team, _id(4), end_at=now + timedelta(microseconds=1))
    await _add(store, team, _id(5), end_at=now - timedelta(minutes=3), state=PAUSED)
    await _add(store, team, _id(6), end_at=now - timedelta(minutes=3), state=KILLED)
    expired = await store.expired_sandboxes(now)
    assert [s.sandbox_id for s in expired] == [_id(1), _id(2), _id(3)]
    assert {s.sandbox_id for s in await store.expired_sandboxes()} >= {_id(1), _id(4)}


async def test_sandboxes_on_a_node(store: Store, team: Team) -> None:
    await _add(store, team, _id(1), node_id="n1")
    await _add(store, team, _id(2), node_id="n1", state=PAUSED)
    await _add(store, team, _id(3), node_id="n1", state=KILLED)
    await _add(store, team, _id(4), node_id="n2")
    assert [s.sandbox_id for s in await store.running_on_node("n1")] == [_id(1)]
    both = await store.running_on_node("n1", include_paused=True)
    assert sorted(s.sandbox_id for s in both) == [_id(1), _id(2)]
    assert await store.running_on_node("n3") == []


async def test_network_config_is_replaced(store: Store, team: Team) -> None:
    await _add(store, team, _id(1), network={"allowOut": ["a.com"]})
    updated = await store.set_sandbox_network(_id(1), {"denyOut": ["0.0.0.0/0"]}, team_id=team.id)
    assert updated is not None and updated.network == {"denyOut": ["0.0.0.0/0"]}
    cleared = await store.set_sandbox_network(_id(1), None)
    assert cleared is not None and cleared.network is None
