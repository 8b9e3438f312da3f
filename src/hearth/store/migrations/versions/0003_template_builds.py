"""Template builds, their log entries, and the tags that name a template's builds.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "template_builds",
        sa.Column("build_id", sa.String(36), nullable=False),
        sa.Column("template_id", sa.String(255), nullable=False),
        sa.Column("team_id", sa.String(36), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("recipe", JSONDocument, nullable=True),
        sa.Column("artifact", JSONDocument, nullable=True),
        sa.Column("reason", JSONDocument, nullable=True),
        sa.Column("cpu_count", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("disk_size_mb", sa.Integer(), nullable=False),
        sa.Column("envd_version", sa.String(32), nullable=True),
        sa.Column("tags", JSONDocument, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('waiting', 'building', 'ready', 'error')",
            name="ck_template_builds_status",
        ),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["templates.template_id"],
            name="fk_template_builds_template_id_templates",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_template_builds_team_id_teams"),
        sa.PrimaryKeyConstraint("build_id", name="pk_template_builds"),
    )
    op.create_index(
        "ix_template_builds_template_id_created_at",
        "template_builds",
        ["template_id", "created_at"],
    )
    op.create_table(
        "template_build_logs",
        sa.Column("build_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("step", sa.String(255), nullable=True),
        sa.ForeignKeyConstraint(
            ["build_id"],
            ["template_builds.build_id"],
            name="fk_template_build_logs_build_id_template_builds",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("build_id", "seq", name="pk_template_build_logs"),
    )
    op.create_table(
        "template_tags",
        sa.Column("template_id", sa.String(255), nullable=False),
        sa.Column("tag", sa.String(255), nullable=False),
        sa.Column("build_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["templates.template_id"],
            name="fk_template_tags_template_id_templates",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("template_id", "tag", name="pk_template_tags"),
    )


def downgrade() -> None:
    for table in ("template_tags", "template_build_logs", "template_builds"):
        op.drop_table(table)
