"""uploads.etag: tell a repeated S3 event from new bytes under the same key

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("etag", sa.String(128)))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("etag")
