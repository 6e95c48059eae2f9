"""dataset_versions lineage: the version an append extends, the rows it added and replaced, and
the Parquet parts its whole data is read from; how a feature set was built

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dataset_versions") as batch:
        batch.add_column(sa.Column("parent_version_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("rows_added", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("rows_replaced", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("parts", sa.JSON(), nullable=True))
    with op.batch_alter_table("feature_sets") as batch:
        batch.add_column(sa.Column("build", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feature_sets") as batch:
        batch.drop_column("build")
    with op.batch_alter_table("dataset_versions") as batch:
        batch.drop_column("parts")
        batch.drop_column("rows_replaced")
        batch.drop_column("rows_added")
        batch.drop_column("parent_version_id")
