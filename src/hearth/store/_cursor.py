"""The sandbox-list cursor, shaped as infra shapes it (spec §2.11).

`base64url("<RFC 3339 startedAt>__<sandboxID>")`, with `__asc` appended for ascending
order: the position after the last row of a page in the order (startedAt, sandboxID).
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime

from hearth.store._records import InvalidCursor

_SEP = "__"
_ASC = "asc"
# What a sandbox id in a token may be: text a query can carry (PostgreSQL takes no NUL).
_ID = re.compile(r"[^\x00-\x1f\x7f]+")


def encode(started_at: datetime, sandbox_id: str, ascending: bool) -> str:
    stamp = started_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    parts = [stamp, sandbox_id, _ASC] if ascending else [stamp, sandbox_id]
    return base64.urlsafe_b64encode(_SEP.join(parts).encode()).decode()


def decode(token: str, ascending: bool) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise InvalidCursor("invalid next token") from e
    parts = text.split(_SEP)
    if len(parts) == 3 and parts[2] == _ASC:
        token_ascending = True
    elif len(parts) == 2:
        token_ascending = False
    else:
        raise InvalidCursor("invalid next token")
    if token_ascending != ascending:
        raise InvalidCursor("invalid next token: it was made for the other order")
    try:
        started_at = datetime.fromisoformat(parts[0])
        if started_at.tzinfo is None:
            raise ValueError("no offset")
        started_at = started_at.astimezone(UTC)
    except (ValueError, OverflowError) as e:
        raise InvalidCursor("invalid next token") from e
    if not _ID.fullmatch(parts[1]):
        raise InvalidCursor("invalid next token")
    return started_at, parts[1]
