"""uploads identified by key and ETag, with their own report; unclaimed_uploads

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Before this, an upload's id was its folder, so no two rows share a key: the
    # constraint holds for rows already there.
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("report_key", sa.String(1024)))
        batch.add_column(sa.Column("report", sa.JSON))
        batch.create_unique_constraint("uq_uploads_key_etag", ["key", "etag"])
    op.create_table(
        "unclaimed_uploads",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("unclaimed_key", sa.String(1024), nullable=False),
        sa.Column("dataset", sa.String(63)),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("etag", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_unclaimed_uploads_dataset", "unclaimed_uploads", ["dataset"])


def downgrade() -> None:
    op.drop_index("ix_unclaimed_uploads_dataset", table_name="unclaimed_uploads")
    op.drop_table("unclaimed_uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_constraint("uq_uploads_key_etag", type_="unique")
        batch.drop_column("report")
        batch.drop_column("report_key")
