"""Teams, API keys, sandboxes, templates and sandbox events.

Revision ID: 0001
Revises:
Create Date: 2025-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_teams"),
        sa.UniqueConstraint("name", name="uq_teams_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("team_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("suffix", sa.String(8), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_api_keys_team_id_teams"),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_team_id", "api_keys", ["team_id"])
    op.create_table(
        "sandboxes",
        sa.Column("sandbox_id", sa.String(64), nullable=False),
        sa.Column("team_id", sa.String(36), nullable=False),
        sa.Column("template_id", sa.String(255), nullable=False),
        sa.Column("alias", sa.String(255), nullable=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("metadata", JSONDocument, nullable=False),
        sa.Column("cpu_count", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("disk_size_mb", sa.Integer(), nullable=False),
        sa.Column("envd_version", sa.String(32), nullable=False),
        sa.Column("envd_access_token", sa.String(255), nullable=True),
        sa.Column("traffic_access_token", sa.String(255), nullable=True),
        sa.Column("allow_internet", sa.Boolean(), nullable=True),
        sa.Column("auto_pause", sa.Boolean(), nullable=False),
        sa.Column("auto_resume", sa.Boolean(), nullable=False),
        sa.Column("network", JSONDocument, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("node_id", sa.String(255), nullable=True),
        sa.Column("runtime", sa.String(32), nullable=True),
        sa.Column("killed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('running', 'paused', 'killed')", name="ck_sandboxes_state"),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_sandboxes_team_id_teams"),
        sa.PrimaryKeyConstraint("sandbox_id", name="pk_sandboxes"),
    )
    op.create_index(
        "ix_sandboxes_team_id_state_started_at_sandbox_id",
        "sandboxes",
        ["team_id", "state", "started_at", "sandbox_id"],
    )
    op.create_index("ix_sandboxes_state_end_at", "sandboxes", ["state", "end_at"])
    op.create_index("ix_sandboxes_node_id_state", "sandboxes", ["node_id", "state"])
    op.create_table(
        "templates",
        sa.Column("template_id", sa.String(255), nullable=False),
        sa.Column("team_id", sa.String(36), nullable=True),
        sa.Column("cpu_count", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("disk_size_mb", sa.Integer(), nullable=False),
        sa.Column("envd_version", sa.String(32), nullable=False),
        sa.Column("build_id", sa.String(36), nullable=True),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("build_count", sa.Integer(), nullable=False),
        sa.Column("spawn_count", sa.Integer(), nullable=False),
        sa.Column("last_spawned_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_templates_team_id_teams"),
        sa.PrimaryKeyConstraint("template_id", name="pk_templates"),
    )
    op.create_index("ix_templates_team_id", "templates", ["team_id"])
    op.create_table(
        "template_aliases",
        sa.Column("alias", sa.String(255), nullable=False),
        sa.Column("template_id", sa.String(255), nullable=False),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["templates.template_id"],
            name="fk_template_aliases_template_id_templates",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("alias", name="pk_template_aliases"),
    )
    op.create_index("ix_template_aliases_template_id", "template_aliases", ["template_id"])
    op.create_table(
        "sandbox_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sandbox_id", sa.String(64), nullable=False),
        sa.Column("team_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", JSONDocument, nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_sandbox_events_team_id_teams"),
        sa.PrimaryKeyConstraint("id", name="pk_sandbox_events"),
    )
    op.create_index(
        "ix_sandbox_events_team_id_sandbox_id_timestamp_id",
        "sandbox_events",
        ["team_id", "sandbox_id", "timestamp", "id"],
    )


def downgrade() -> None:
    for table in (
        "sandbox_events",
        "template_aliases",
        "templates",
        "sandboxes",
        "api_keys",
        "teams",
    ):
        op.drop_table(table)
