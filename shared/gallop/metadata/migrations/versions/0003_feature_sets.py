"""feature_sets: the features computed for a dataset version under a feature spec

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feature_sets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("version_id", sa.String(64), nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("data_key", sa.String(1024)),
        sa.Column("manifest_key", sa.String(1024)),
        sa.Column("state_key", sa.String(1024)),
        sa.Column("row_count", sa.BigInteger),
        sa.Column("features", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("dataset_id", "version_id", "spec_hash", name="uq_feature_sets"),
        sa.CheckConstraint("status IN ('READY', 'FAILED')", name="ck_feature_sets_status"),
    )


def downgrade() -> None:
    op.drop_table("feature_sets")
