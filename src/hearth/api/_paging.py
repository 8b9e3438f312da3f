"""Pages of a list the API holds whole: position tokens, as the template lists use."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hearth.api._errors import ApiError

T = TypeVar("T")
# The OpenAPI description of the header every paged list answers with.
NEXT_TOKEN = {
    "X-Next-Token": {
        "description": "The next page's nextToken, on every page but the last",
        "schema": {"type": "string"},
    }
}


def paginate(
    items: Sequence[T], key: Callable[[T], list[Any]], limit: int, token: str | None
) -> tuple[list[T], str | None]:
    """The page after `token` of `items` (sorted ascending by `key`) and the token of the
    next one, if any. Tokens name a position, not an item: deletions do not break them."""
    if token:
        try:
            after = json.loads(base64.urlsafe_b64decode(token.encode()))
        except (ValueError, binascii.Error, RecursionError):  # a made-up token, too deep
            raise ApiError(400, "invalid nextToken") from None
        if not isinstance(after, list):
            raise ApiError(400, "invalid nextToken")
        try:
            items = [i for i in items if key(i) > after]
        except (TypeError, RecursionError):
            raise ApiError(400, "invalid nextToken") from None
    page = list(items[:limit])
    if len(items) <= limit or not page:
        return page, None
    return page, base64.urlsafe_b64encode(json.dumps(key(page[-1])).encode()).decode()
