"""The store: the source of truth for teams, API keys, sandboxes, templates and events.

`await open(url)` connects to SQLite (the default) or PostgreSQL, brings the schema to
the newest migration, and returns a `Store` whose methods return plain records.
"""

from hearth.store._keys import hash_api_key, is_api_key
from hearth.store._records import (
    ApiKey,
    Conflict,
    InvalidCursor,
    Sandbox,
    SandboxEvent,
    SandboxState,
    StoreError,
    Team,
    Template,
)
from hearth.store._sandboxes import LIVE_STATES, MAX_PAGE
from hearth.store._store import Store, open
from hearth.store._teams import DEFAULT_TEAM

__all__ = [
    "DEFAULT_TEAM",
    "LIVE_STATES",
    "MAX_PAGE",
    "ApiKey",
    "Conflict",
    "InvalidCursor",
    "Sandbox",
    "SandboxEvent",
    "SandboxState",
    "Store",
    "StoreError",
    "Team",
    "Template",
    "hash_api_key",
    "is_api_key",
    "open",
]
