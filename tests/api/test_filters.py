"""The list filters decode as infra decodes them (spec §2.10), whatever SDK encoded them."""

from __future__ import annotations

import urllib.parse

import pytest

from hearth.api._errors import ApiError
from hearth.api._filters import decode_metadata, decode_states, decode_time
from hearth.store import SandboxState

PAIRS = {"a": "b c", "key with space": "x&y=z", "ü": "100%+", "plain": "v"}


def _python_sdk(metadata: dict[str, str]) -> str:
    """What the server's framework hands over from the Python SDK: it quotes each key and
    value, urlencodes the pairs, and httpx encodes the query once more (undone once)."""
    quoted = {urllib.parse.quote(k): urllib.parse.quote(v) for k, v in metadata.items()}
    return urllib.parse.urlencode(quoted)


def _js_sdk(metadata: dict[str, str]) -> str:
    """JS: `new URLSearchParams(metadata)` into one query value, encoded once more."""
    return urllib.parse.urlencode(metadata, quote_via=urllib.parse.quote)


def test_metadata_from_the_python_sdk() -> None:
    assert decode_metadata(_python_sdk(PAIRS)) == PAIRS


def test_metadata_from_the_js_sdk() -> None:
    # JS encodes one layer less, so (in infra too) only `&`, `=` and `+` in its values
    # do not survive the decoding; spaces and other text do.
    pairs = {"a": "b c", "key with space": "ü/x:y", "plain": "v"}
    assert decode_metadata(_js_sdk(pairs)) == pairs


def test_metadata_as_captured_on_the_wire() -> None:
    # Spec §2.10: Python sends a%3Db%252520c, JS a%3Db%2520c; the framework undoes one layer.
    assert decode_metadata(urllib.parse.unquote("a%3Db%252520c")) == {"a": "b c"}
    assert decode_metadata(urllib.parse.unquote("a%3Db%2520c")) == {"a": "b c"}


@pytest.mark.parametrize("value", ["novalue", "a=b=c", "a=b&c"])
def test_metadata_needs_one_equals_per_pair(value: str) -> None:
    with pytest.raises(ApiError) as failure:
        decode_metadata(value)
    assert failure.value.status == 400


def test_states() -> None:
    both = [SandboxState.RUNNING, SandboxState.PAUSED]
    assert decode_states(None) == both
    assert decode_states(["running,paused"]) == both
    assert decode_states(["paused", "running"]) == [SandboxState.PAUSED, SandboxState.RUNNING]
    assert decode_states(["running"]) == [SandboxState.RUNNING]
    with pytest.raises(ApiError):
        decode_states(["killed"])


def test_started_after() -> None:
    assert decode_time("2026-01-02T03:04:05Z", "t").utcoffset().total_seconds() == 0
    assert decode_time("2026-01-02T03:04:05+02:00", "t").utcoffset().total_seconds() == 7200
    # An unencoded `+` in a query string arrives as a space.
    assert decode_time("2026-01-02T03:04:05 02:00", "t").utcoffset().total_seconds() == 7200
    for bad in ("yesterday", "2026-01-02T03:04:05"):
        with pytest.raises(ApiError):
            decode_time(bad, "t")
