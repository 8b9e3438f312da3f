"""Decoding of the sandbox-list query parameters as infra decodes them (spec §2.10, §2.3)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from urllib.parse import unquote_plus

from hearth.api._errors import ApiError, shown
from hearth.store import SandboxState

STATES = {"running": SandboxState.RUNNING, "paused": SandboxState.PAUSED}


def decode_metadata(value: str) -> dict[str, str]:
    """`metadata` as the framework handed it (URL-decoded once): query-unescape the whole,
    split on `&`, require one `=` per part, query-unescape key and value. Python quotes
    three times and JS twice; both come out as the pairs the user wrote."""
    pairs: dict[str, str] = {}
    for part in unquote_plus(value).split("&"):
        if part.count("=") != 1:
            raise ApiError(400, f"invalid metadata filter {shown(part)!r}: expected key=value")
        key, _, val = part.partition("=")
        pairs[unquote_plus(key)] = unquote_plus(val)
    if any("\x00" in text for pair in pairs.items() for text in pair):
        # No metadata holds one (`_limits`), and PostgreSQL could not compare one.
        raise ApiError(400, "invalid metadata filter: it must not contain NUL characters")
    return pairs


def decode_states(values: Iterable[str] | None) -> list[SandboxState]:
    """`state=running,paused` (form style, not exploded), or repeated; default both."""
    names = [name.strip() for value in values or () for name in value.split(",") if name.strip()]
    if not names:
        return list(STATES.values())
    try:
        return list(dict.fromkeys(STATES[name] for name in names))
    except KeyError as e:
        raise ApiError(400, f"invalid state {e.args[0]!r}: expected running or paused") from None


def decode_time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise ApiError(400, f"invalid {name} {value!r}: expected an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ApiError(400, f"invalid {name} {value!r}: the time needs an offset")
    return moment
