"""live_quality, drift_checks and capture_files: what the monitor found and what it read

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No foreign key to models: the monitor may read captures of a model whose row is
    # gone, and its records of them stay readable.
    op.create_table(
        "live_quality",
        sa.Column("model_id", sa.String(64), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("metric", sa.String(64), primary_key=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("groups", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "drift_checks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.String(64), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("flagged", sa.Integer(), nullable=False),
        sa.Column("table", sa.JSON(), nullable=False),
    )
    op.create_index("ix_drift_checks_model_id", "drift_checks", ["model_id"])
    op.create_table(
        "capture_files",
        sa.Column("key", sa.String(1024), primary_key=True),
        sa.Column("dataset", sa.String(63), nullable=False),
        sa.Column("model_id", sa.String(64), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_capture_files_model_id", "capture_files", ["model_id"])


def downgrade() -> None:
    op.drop_index("ix_capture_files_model_id", table_name="capture_files")
    op.drop_table("capture_files")
    op.drop_index("ix_drift_checks_model_id", table_name="drift_checks")
    op.drop_table("drift_checks")
    op.drop_table("live_quality")
