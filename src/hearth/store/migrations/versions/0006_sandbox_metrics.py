"""Samples of each running sandbox's use (CPU, memory, disk), kept for a bounded time.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sandbox_metrics",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sandbox_id", sa.String(64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cpu_count", sa.Integer(), nullable=False),
        sa.Column("cpu_used_pct", sa.Float(), nullable=False),
        sa.Column("mem_used", sa.BigInteger(), nullable=False),
        sa.Column("mem_total", sa.BigInteger(), nullable=False),
        sa.Column("mem_cache", sa.BigInteger(), nullable=False),
        sa.Column("disk_used", sa.BigInteger(), nullable=False),
        sa.Column("disk_total", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sandbox_metrics"),
    )
    op.create_index(
        "ix_sandbox_metrics_sandbox_id_timestamp", "sandbox_metrics", ["sandbox_id", "timestamp"]
    )
    op.create_index("ix_sandbox_metrics_timestamp", "sandbox_metrics", ["timestamp"])


def downgrade() -> None:
    op.drop_table("sandbox_metrics")
