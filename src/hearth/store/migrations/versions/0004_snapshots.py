"""Snapshots: a template made from a sandbox names the sandbox it was taken of.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("templates") as batch:
        batch.add_column(sa.Column("snapshot_of", sa.String(64), nullable=True))
    op.create_index("ix_templates_snapshot_of", "templates", ["snapshot_of"])


def downgrade() -> None:
    op.drop_index("ix_templates_snapshot_of", "templates")
    with op.batch_alter_table("templates") as batch:
        batch.drop_column("snapshot_of")
