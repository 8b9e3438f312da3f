"""The store: the source of truth for teams, API keys, sandboxes, templates, their builds,
events and metrics.

`await open(url)` connects to SQLite (the default) or PostgreSQL, brings the schema to
the newest migration, and returns a `Store` whose methods return plain records.
"""

from hearth.store._keys import hash_api_key, is_api_key
from hearth.store._records import (
    CREATED,
    ApiKey,
    Build,
    BuildLogEntry,
    Conflict,
    InvalidCursor,
    LifecycleEvent,
    NotFound,
    Sandbox,
    SandboxEvent,
    SandboxMetric,
    SandboxState,
    StoreError,
    Team,
    TeamLimits,
    Template,
    TemplateTag,
)
from hearth.store._sandboxes import LIVE_STATES, MAX_PAGE
from hearth.store._store import Store, open
from hearth.store._teams import DEFAULT_TEAM

__all__ = [
    "CREATED",
    "DEFAULT_TEAM",
    "LIVE_STATES",
    "MAX_PAGE",
    "ApiKey",
    "Build",
    "BuildLogEntry",
    "Conflict",
    "InvalidCursor",
    "LifecycleEvent",
    "NotFound",
    "Sandbox",
    "SandboxEvent",
    "SandboxMetric",
    "SandboxState",
    "Store",
    "StoreError",
    "Team",
    "TeamLimits",
    "Template",
    "TemplateTag",
    "hash_api_key",
    "is_api_key",
    "open",
]
