"""Pause and resume: what a pause kept, the auto-pause kind, and what a resume needs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # batch_alter_table: SQLite cannot add some columns in place; PostgreSQL alters.
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(
            sa.Column("auto_pause_memory", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("pause_memory", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("timeout", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("env_vars", JSONDocument, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        for column in ("env_vars", "timeout", "pause_memory", "auto_pause_memory"):
            batch.drop_column(column)
