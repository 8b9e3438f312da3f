"""API keys: how they are made and the only form in which the store keeps them."""

from __future__ import annotations

import hashlib
import re
import secrets

API_KEY_PREFIX = "e2b_"
_API_KEY = re.compile(r"e2b_[0-9a-f]{40}")


def new_api_key() -> str:
    """A fresh key as E2B shapes them: `e2b_` and 40 lowercase hex digits (160 bits)."""
    return API_KEY_PREFIX + secrets.token_hex(20)


def is_api_key(text: str) -> bool:
    return _API_KEY.fullmatch(text) is not None


def hash_api_key(key: str) -> str:
    """The stored form. The key is 160 random bits, so a fast unsalted hash is enough:
    there is nothing to guess, and looking the hash up by index reveals no more than a
    comparison of hashes would."""
    return hashlib.sha256(key.encode()).hexdigest()
