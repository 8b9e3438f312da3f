"""Per-team limits: concurrent sandboxes, starts per second, vCPU and memory totals,
the longest timeout (a team without a row has the server's defaults).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "team_limits",
        sa.Column("team_id", sa.String(36), sa.ForeignKey("teams.id"), primary_key=True),
        sa.Column("concurrent_sandboxes", sa.Integer()),
        sa.Column("starts_per_second", sa.Integer()),
        sa.Column("vcpus", sa.Integer()),
        sa.Column("memory_mb", sa.Integer()),
        sa.Column("max_timeout", sa.Integer()),
    )


def downgrade() -> None:
    op.drop_table("team_limits")
