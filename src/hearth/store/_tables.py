"""The schema as SQLAlchemy Core tables; the migrations in `migrations/` create exactly this.

A test compares the two (Alembic's autogenerate), so a column added here without a
migration, or the reverse, fails.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

# JSONB on PostgreSQL: metadata filters use its containment operator (`@>`). None is
# SQL NULL, not JSON null.
JSONDocument = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on both databases.

    PostgreSQL keeps `timestamptz`. SQLite has no time zones: the value is stored as
    naive UTC text with microseconds, whose lexical order is its time order, so
    comparisons and the pagination cursor behave as on PostgreSQL.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store takes aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

teams = sa.Table(
    "teams",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

# A team's own limits (`TeamLimits`); a team without a row has the server's defaults.
team_limits = sa.Table(
    "team_limits",
    metadata,
    sa.Column("team_id", sa.String(36), sa.ForeignKey("teams.id"), primary_key=True),
    sa.Column("concurrent_sandboxes", sa.Integer()),
    sa.Column("starts_per_second", sa.Integer()),
    sa.Column("vcpus", sa.Integer()),
    sa.Column("memory_mb", sa.Integer()),
    sa.Column("max_timeout", sa.Integer()),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("team_id", sa.String(36), sa.ForeignKey("teams.id"), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("suffix", sa.String(8), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # sha256, hex
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_used_at", UTCDateTime()),
    sa.Column("revoked_at", UTCDateTime()),
)

sandboxes = sa.Table(
    "sandboxes",
    metadata,
    sa.Column("sandbox_id", sa.String(64), primary_key=True),
    sa.Column("team_id", sa.String(36), sa.ForeignKey("teams.id"), nullable=False),
    sa.Column("template_id", sa.String(255), nullable=False),
    sa.Column("alias", sa.String(255)),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("metadata", JSONDocument, nullable=False),
    sa.Column("cpu_count", sa.Integer(), nullable=False),
    sa.Column("memory_mb", sa.Integer(), nullable=False),
    sa.Column("disk_size_mb", sa.Integer(), nullable=False),
    sa.Column("envd_version", sa.String(32), nullable=False),
    sa.Column("envd_access_token", sa.String(255)),
    sa.Column("traffic_access_token", sa.String(255)),
    sa.Column("allow_internet", sa.Boolean()),
    sa.Column("auto_pause", sa.Boolean(), nullable=False),
    sa.Column("auto_resume", sa.Boolean(), nullable=False),
    # False: the auto-pause at the timeout keeps only the filesystem.
    sa.Column("auto_pause_memory", sa.Boolean(), nullable=False, server_default=sa.true()),
    # What the latest pause kept: True memory and files, False files only; None: never paused.
    sa.Column("pause_memory", sa.Boolean()),
    sa.Column("timeout", sa.Integer()),  # the create-time timeout (s): an auto-resume's
    sa.Column("env_vars", JSONDocument),  # the create-time envVars, set again on a resume
    sa.Column("network", JSONDocument),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("end_at", UTCDateTime(), nullable=False),
    sa.Column("node_id", sa.String(255)),
    sa.Column("runtime", sa.String(32)),
    sa.Column("killed_at", UTCDateTime()),
    sa.CheckConstraint("state IN ('running', 'paused', 'killed')", name="state"),
    # Listing walks this index in cursor order; expiry and reconcile have their own.
    sa.Index(None, "team_id", "state", "started_at", "sandbox_id"),
    sa.Index(None, "state", "end_at"),
    sa.Index(None, "node_id", "state"),
)

templates = sa.Table(
    "templates",
    metadata,
    sa.Column("template_id", sa.String(255), primary_key=True),
    sa.Column("team_id", sa.String(36), sa.ForeignKey("teams.id"), index=True),
    sa.Column("cpu_count", sa.Integer(), nullable=False),
    sa.Column("memory_mb", sa.Integer(), nullable=False),
    sa.Column("disk_size_mb", sa.Integer(), nullable=False),
    sa.Column("envd_version", sa.String(32), nullable=False),
    sa.Column("build_id", sa.String(36)),
    sa.Column("public", sa.Boolean(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("build_count", sa.Integer(), nullable=False),
    sa.Column("spawn_count", sa.Integer(), nullable=False),
    sa.Column("last_spawned_at", UTCDateTime()),
    # A snapshot's template: the sandbox it was taken of (None: a built template).
    sa.Column("snapshot_of", sa.String(64), index=True),
)

# One row per alias: an alias names one template across the installation, as in E2B.
template_aliases = sa.Table(
    "template_aliases",
    metadata,
    sa.Column("alias", sa.String(255), primary_key=True),
    sa.Column(
        "template_id",
        sa.String(255),
        sa.ForeignKey("templates.template_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
)

sandbox_events = sa.Table(
    "sandbox_events",
    metadata,
    # INTEGER PRIMARY KEY on SQLite is its rowid, which is what autoincrements there.
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("sandbox_id", sa.String(64), nullable=False),
    sa.Column("team_id", sa.String(36), sa.ForeignKey("teams.id"), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("timestamp", UTCDateTime(), nullable=False),
    sa.Column("payload", JSONDocument, nullable=False),
    sa.Index(None, "team_id", "sandbox_id", "timestamp", "id"),
)

# A template's builds, newest last; a ready build's artifact is what sandboxes start from.
template_builds = sa.Table(
    "template_builds",
    metadata,
    sa.Column("build_id", sa.String(36), primary_key=True),
    sa.Column(
        "template_id",
        sa.String(255),
        sa.ForeignKey("templates.template_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("team_id", sa.String(36), sa.ForeignKey("teams.id")),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("recipe", JSONDocument),
    sa.Column("artifact", JSONDocument),
    sa.Column("reason", JSONDocument),  # why it failed: {"message", "step"?}
    sa.Column("cpu_count", sa.Integer(), nullable=False),
    sa.Column("memory_mb", sa.Integer(), nullable=False),
    sa.Column("disk_size_mb", sa.Integer(), nullable=False),
    sa.Column("envd_version", sa.String(32)),
    sa.Column("tags", JSONDocument, nullable=False),  # assigned to the build when ready
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime()),
    sa.Column("finished_at", UTCDateTime()),
    sa.CheckConstraint("status IN ('waiting', 'building', 'ready', 'error')", name="status"),
    sa.Index(None, "template_id", "created_at"),
)

# A build's log, in the order it was written: `seq` counts from 0 within the build.
template_build_logs = sa.Table(
    "template_build_logs",
    metadata,
    sa.Column(
        "build_id",
        sa.String(36),
        sa.ForeignKey("template_builds.build_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("timestamp", UTCDateTime(), nullable=False),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("step", sa.String(255)),
)

# One row per tag of a template ("default" among them): the build the tag names now.
template_tags = sa.Table(
    "template_tags",
    metadata,
    sa.Column(
        "template_id",
        sa.String(255),
        sa.ForeignKey("templates.template_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("tag", sa.String(255), primary_key=True),
    sa.Column("build_id", sa.String(36), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

# Samples of each running sandbox's use, every few seconds while it runs; kept for a
# bounded time (the sampler deletes older ones). Read by sandbox in time order, and
# pruned by time.
sandbox_metrics = sa.Table(
    "sandbox_metrics",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("sandbox_id", sa.String(64), nullable=False),
    sa.Column("timestamp", UTCDateTime(), nullable=False),
    sa.Column("cpu_count", sa.Integer(), nullable=False),
    sa.Column("cpu_used_pct", sa.Float(), nullable=False),
    sa.Column("mem_used", sa.BigInteger(), nullable=False),
    sa.Column("mem_total", sa.BigInteger(), nullable=False),
    sa.Column("mem_cache", sa.BigInteger(), nullable=False),
    sa.Column("disk_used", sa.BigInteger(), nullable=False),
    sa.Column("disk_total", sa.BigInteger(), nullable=False),
    sa.Index(None, "sandbox_id", "timestamp"),
    sa.Index(None, "timestamp"),
)
