"""Template names as E2B spells them (spec §2.1): `alias`, `alias:tag`, `namespace/alias`
and `namespace/alias:tag`, lower-cased; ids; and the checks infra makes of each part.

Infra bounds no part's length; Hearth takes Docker's bound on a tag, 128 characters, for
each part, and at most MAX_TAGS tags in one request.
"""

from __future__ import annotations

import re
import secrets
import string
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from hearth.api._errors import ApiError, shown

DEFAULT_TAG = "default"
_ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 20
MAX_PART_LENGTH = 128
MAX_TAGS = 100
_IDENTIFIER = re.compile(r"[a-z0-9_-]+")
_TAG = re.compile(r"[a-z0-9_.-]+")
# Starlette decodes the path before routing, so the `%2F` the SDK puts in a namespaced
# name would split it into two segments; `_app` keeps it encoded as this instead.
ENCODED_SLASH = "%2F"


def new_id() -> str:
    """20 characters of [a-z0-9] (sandbox and template ids), never a `-`: the proxy
    splits host labels on it."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))


@dataclass(frozen=True)
class Name:
    """A parsed template reference: the alias (or template id), and what qualified it."""

    alias: str
    namespace: str | None = None
    tag: str | None = None  # None: the default tag (also when spelled out as "default")

    @property
    def tag_or_default(self) -> str:
        return self.tag or DEFAULT_TAG


def parse_name(text: str, *, what: str = "name") -> Name:
    """`[namespace/]alias[:tag]` as infra's `id.ParseName` reads it; 400 if malformed."""
    raw = text.replace(ENCODED_SLASH, "/").replace(ENCODED_SLASH.lower(), "/").strip()
    identifier, colon, tag = raw.partition(":")
    namespace, slash, alias = identifier.rpartition("/")
    try:
        clean_tag = _clean(tag, _TAG, "tag") if colon else None
        clean_namespace = _clean(namespace, _IDENTIFIER, "namespace") if slash else None
        clean_alias = _clean(alias, _IDENTIFIER, "template ID")
    except ValueError as e:
        raise ApiError(400, f"Invalid {what}: {e}") from None
    if clean_tag == DEFAULT_TAG:
        clean_tag = None
    return Name(clean_alias, clean_namespace, clean_tag)


def clean_tags(tags: Iterable[str]) -> list[str]:
    """The tags lower-cased and deduplicated in order; 400 for one infra rejects (bad
    characters, or a UUID, which would read as a build id)."""
    tags = list(tags)
    if len(tags) > MAX_TAGS:
        raise ApiError(400, f"At most {MAX_TAGS} tags can be given at once (got {len(tags)})")
    cleaned: list[str] = []
    for tag in tags:
        try:
            value = _clean(tag, _TAG, "tag")
            if _is_uuid(value):
                raise ValueError("tag cannot be a UUID")
        except ValueError as e:
            raise ApiError(400, f"Invalid tag '{shown(tag)}': {e}") from None
        if value not in cleaned:
            cleaned.append(value)
    return cleaned


def check_build_id(build_id: str) -> str:
    if not _is_uuid(build_id):
        raise ApiError(400, f"Invalid build ID: {build_id}")
    return build_id


def _clean(value: str, pattern: re.Pattern[str], what: str) -> str:
    cleaned = value.strip().lower()
    if len(cleaned) > MAX_PART_LENGTH:
        raise ValueError(f"{what} {shown(value)} is longer than {MAX_PART_LENGTH} characters")
    if not pattern.fullmatch(cleaned):
        raise ValueError(f"invalid {what}: {shown(value)}")
    return cleaned


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
