"""training_runs and models: runs identified by their inputs, and the models they registered

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("version_id", sa.String(64), nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("code_version", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("stage", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("metrics", sa.JSON),
        sa.Column("execution", sa.String(2048)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED')",
            name="ck_training_runs_status",
        ),
        sa.CheckConstraint(
            "length(run_id) BETWEEN 16 AND 64", name="ck_training_runs_run_id_length"
        ),
    )
    op.create_index("ix_training_runs_dataset", "training_runs", ["dataset_id"])
    op.create_table(
        "models",
        sa.Column("model_id", sa.String(64), primary_key=True),
        sa.Column(
            "run_id",
            sa.String(64),
            sa.ForeignKey("training_runs.run_id"),
            nullable=False,
            unique=True,
        ),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("artifact_key", sa.String(1024), nullable=False),
        sa.Column("onnx_key", sa.String(1024), nullable=False),
        sa.Column("manifest_key", sa.String(1024), nullable=False),
        sa.Column("report_key", sa.String(1024), nullable=False),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_models_dataset", "models", ["dataset_id"])


def downgrade() -> None:
    op.drop_index("ix_models_dataset", table_name="models")
    op.drop_table("models")
    op.drop_index("ix_training_runs_dataset", table_name="training_runs")
    op.drop_table("training_runs")
