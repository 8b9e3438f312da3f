"""Properties of the decoders of what clients send, over generated input (hypothesis):
the metadata filter (spec §2.10), the list cursors (§2.11 and the template lists'), and
envd's Connect envelopes and binary messages (§3.4). Each round-trips what its encoder
(or the SDK's) makes, and refuses garbage only with the error it documents."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import urllib.parse
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hearth.api._errors import ApiError
from hearth.api._filters import decode_metadata, decode_states, decode_time
from hearth.api._paging import paginate
from hearth.envd import binary_codec
from hearth.envd.connect import FLAG_COMPRESSED, envelope, read_envelopes
from hearth.envd.errors import RpcError
from hearth.store import InvalidCursor, _cursor

# Text as metadata may hold it (UTF-8, as it travels): anything but NUL (`_limits`).
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
METADATA = st.dictionaries(TEXT, TEXT, min_size=1, max_size=6)
# What JS's single layer of encoding keeps intact (spec §2.10; infra's decoding too).
JS_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00&=+%"), max_size=20)
SANDBOX_ID = st.from_regex(r"[a-z0-9]{1,32}", fullmatch=True)


def _python_sdk(metadata: dict[str, str]) -> str:
    """The query value as the framework hands it over from the Python SDK (its quoting of
    each key and value, then urlencode; httpx's layer is undone by the framework)."""
    quoted = {urllib.parse.quote(k): urllib.parse.quote(v) for k, v in metadata.items()}
    return urllib.parse.urlencode(quoted)


def _js_sdk(metadata: dict[str, str]) -> str:
    return urllib.parse.urlencode(metadata, quote_via=urllib.parse.quote)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode()


# --- the metadata filter ---------------------------------------------------------------


@given(METADATA)
def test_metadata_filter_round_trips_from_the_python_sdk(metadata: dict[str, str]) -> None:
    assert decode_metadata(_python_sdk(metadata)) == metadata


@given(st.dictionaries(JS_TEXT, JS_TEXT, min_size=1, max_size=6))
def test_metadata_filter_round_trips_from_the_js_sdk(metadata: dict[str, str]) -> None:
    assert decode_metadata(_js_sdk(metadata)) == metadata


@given(st.text())
def test_metadata_filter_garbage_is_a_400_or_pairs_without_nul(value: str) -> None:
    try:
        pairs = decode_metadata(value)
    except ApiError as e:
        assert e.status == 400
        return
    assert pairs and all("\x00" not in text for pair in pairs.items() for text in pair)


@given(st.lists(st.text(), max_size=4))
def test_state_garbage_is_a_400(values: list[str]) -> None:
    try:
        states = decode_states(values)
    except ApiError as e:
        assert e.status == 400
        return
    assert states and len(states) == len(set(states))


@given(st.text())
def test_time_garbage_is_a_400_or_an_aware_time(value: str) -> None:
    try:
        moment = decode_time(value, "startedAfter")
    except ApiError as e:
        assert e.status == 400
        return
    assert moment is not None and moment.tzinfo is not None


@given(st.datetimes(timezones=st.just(UTC)))
def test_a_time_the_python_sdk_sends_is_read_back(moment: datetime) -> None:
    assert decode_time(moment.isoformat(), "startedAfter") == moment


# --- the sandbox-list cursor -----------------------------------------------------------


@given(st.datetimes(timezones=st.just(UTC)), SANDBOX_ID, st.booleans())
def test_sandbox_cursor_round_trips(moment: datetime, sandbox_id: str, ascending: bool) -> None:
    token = _cursor.encode(moment, sandbox_id, ascending)
    assert _cursor.decode(token, ascending) == (moment, sandbox_id)
    with pytest.raises(InvalidCursor):  # a token of one order is no token of the other
        _cursor.decode(token, not ascending)


@given(st.one_of(st.text(), st.text().map(_b64)), st.booleans())
def test_sandbox_cursor_garbage_is_invalid_or_a_usable_position(
    token: str, ascending: bool
) -> None:
    try:
        moment, sandbox_id = _cursor.decode(token, ascending)
    except InvalidCursor:
        return
    # What a store query compares with: a UTC time and an id PostgreSQL can take.
    assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0
    assert sandbox_id and "\x00" not in sandbox_id


# --- the template and snapshot lists' cursor --------------------------------------------

FINITE = st.floats(allow_nan=False, allow_infinity=False)
ITEMS = st.lists(st.tuples(FINITE, TEXT), unique_by=lambda item: item, max_size=30).map(sorted)


def _key(item: tuple[float, str]) -> list:
    return list(item)


@given(ITEMS, st.integers(1, 10))
def test_pages_cover_the_list_once_in_order(items: list, limit: int) -> None:
    seen, token, pages = [], None, 0
    while True:
        page, token = paginate(items, _key, limit, token)
        assert len(page) <= limit
        seen.extend(page)
        pages += 1
        if token is None:
            break
        assert pages <= len(items)  # every page but the last is full: this ends
    assert seen == items


JSON = st.recursive(
    st.none() | st.booleans() | FINITE | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=10,
)


@given(
    ITEMS,
    st.one_of(
        st.text(),
        JSON.map(lambda value: _b64(json.dumps(value))),
        st.integers(1, 3000).map(lambda depth: _b64("[" * depth + "]" * depth)),
    ),
)
def test_list_cursor_garbage_is_a_400_or_a_page(items: list, token: str) -> None:
    try:
        page, _ = paginate(items, _key, 5, token)
    except ApiError as e:
        assert e.status == 400
        return
    assert all(item in items for item in page)


# --- envd's Connect envelopes ----------------------------------------------------------

UNCOMPRESSED = st.integers(0, 255).filter(lambda flags: not flags & FLAG_COMPRESSED)
MESSAGES = st.lists(st.tuples(UNCOMPRESSED, st.binary(max_size=200)), max_size=6)


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at `cuts`, as a body may arrive."""
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(MESSAGES, st.lists(st.integers(0, 2000), max_size=10))
def test_envelopes_round_trip_however_the_body_is_cut(messages: list, cuts: list[int]) -> None:
    body = b"".join(envelope(flags, payload) for flags, payload in messages)
    assert list(read_envelopes(_chunked(body, cuts))) == messages


@given(st.lists(st.binary(max_size=200), max_size=4))
def test_compressed_envelopes_are_inflated(payloads: list[bytes]) -> None:
    body = b"".join(envelope(FLAG_COMPRESSED, gzip.compress(p)) for p in payloads)
    assert list(read_envelopes([body], "gzip")) == [(FLAG_COMPRESSED, p) for p in payloads]


@given(st.lists(st.binary(max_size=64), max_size=6), st.sampled_from(["identity", "br"]))
def test_envelope_garbage_is_an_rpc_error(chunks: list[bytes], encoding: str) -> None:
    try:
        for flags, payload in read_envelopes(chunks, encoding):
            assert not flags & FLAG_COMPRESSED and isinstance(payload, bytes)
    except RpcError:
        pass


@given(st.binary(max_size=64))
def test_garbage_that_is_not_gzip_is_an_rpc_error(data: bytes) -> None:
    with contextlib.suppress(RpcError):
        list(read_envelopes([envelope(FLAG_COMPRESSED, data)], "gzip"))


def test_a_corrupt_gzip_message_is_an_rpc_error() -> None:
    header = gzip.compress(b"")[:10]  # a valid gzip header, then a deflate block type 3
    with pytest.raises(RpcError):
        list(read_envelopes([envelope(FLAG_COMPRESSED, header + b"\xff\xff\xff\xff")], "gzip"))


# --- envd's binary messages ------------------------------------------------------------

ENVS = st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4)


@given(
    st.text(min_size=1, max_size=20),
    st.lists(st.text(max_size=10), max_size=4),
    ENVS,
    st.text(max_size=10),
)
def test_a_start_request_round_trips_as_protobuf(
    cmd: str, args: list[str], envs: dict[str, str], tag: str
) -> None:
    process: dict = {"cmd": cmd}
    if args:
        process["args"] = args
    if envs:
        process["envs"] = envs
    payload: dict = {"process": process}
    if tag:
        payload["tag"] = tag
    data = binary_codec.encode("process.StartRequest", payload)
    assert binary_codec.decode("process.StartRequest", data) == payload


@given(
    st.binary(max_size=200),
    st.sampled_from(["process.StartRequest", "filesystem.ListDirRequest"]),
)
def test_binary_garbage_is_an_rpc_error_or_a_message(data: bytes, type_name: str) -> None:
    try:
        message = binary_codec.decode(type_name, data)
    except RpcError as e:
        assert e.code == "invalid_argument"
        return
    assert isinstance(message, dict)
