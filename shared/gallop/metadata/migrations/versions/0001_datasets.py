"""datasets, dataset_versions and uploads

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUS = "status IN ('PENDING', 'VALID', 'REJECTED')"


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("version_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("row_count", sa.BigInteger),
        sa.Column("group_count", sa.BigInteger),
        sa.Column("source_key", sa.String(1024), nullable=False),
        sa.Column("data_key", sa.String(1024)),
        sa.Column("report_key", sa.String(1024)),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("dataset_id", "version_id", name="uq_dataset_versions_version"),
        sa.CheckConstraint(STATUS, name="ck_dataset_versions_status"),
    )
    op.create_table(
        "uploads",
        sa.Column("upload_id", sa.String(64), primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("file_format", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(STATUS, name="ck_uploads_status"),
    )
    op.create_index("ix_uploads_dataset", "uploads", ["dataset_id"])


def downgrade() -> None:
    op.drop_index("ix_uploads_dataset", table_name="uploads")
    op.drop_table("uploads")
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
