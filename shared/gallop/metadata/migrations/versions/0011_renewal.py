"""Renewal: aliases per dataset (today's move onto their models' datasets), the alias history
(append-only), traffic and retraining policies, approval requests

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

APPEND_ONLY = "alias_events is append-only: its lines are never changed or removed"
MIGRATED = "aliases became per dataset (migration 0011): the installation's {alias} before"


def upgrade() -> None:
    # The old table's key is the alias alone. Postgres keeps the renamed table's key
    # name, hence a new name for the new key.
    op.rename_table("model_aliases", "model_aliases_0005")
    op.create_table(
        "model_aliases",
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("alias", sa.String(32), nullable=False),
        sa.Column("model_id", sa.String(64), sa.ForeignKey("models.model_id"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", "alias", name="model_aliases_by_dataset_pkey"),
    )
    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("alias", sa.String(32), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_model", sa.String(64), nullable=True),
        sa.Column("to_model", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("approval_id", sa.String(64), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_alias_events_dataset_id", "alias_events", ["dataset_id"])
    # Each global alias moves onto its model's dataset, and the history starts there.
    op.execute(
        "INSERT INTO model_aliases (dataset_id, alias, model_id, updated_at) "
        "SELECT m.dataset_id, a.alias, a.model_id, a.updated_at "
        "FROM model_aliases_0005 a JOIN models m ON m.model_id = a.model_id"
    )
    for alias in ("champion", "challenger"):
        op.execute(
            sa.text(
                "INSERT INTO alias_events (dataset_id, alias, action, from_model, to_model, "
                "actor, reason, at) SELECT dataset_id, alias, 'migrate', NULL, model_id, "
                "'migration 0011', :reason, updated_at FROM model_aliases WHERE alias = :alias"
            ).bindparams(reason=MIGRATED.format(alias=alias), alias=alias)
        )
    op.drop_table("model_aliases_0005")
    _refuse_changes_to_alias_events()

    op.create_table(
        "traffic_policies",
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id"), primary_key=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("challenger_share", sa.Float(), nullable=False),
        sa.Column("shadow_share", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "retraining_policies",
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id"), primary_key=True),
        sa.Column("every_hours", sa.Float(), nullable=True),
        sa.Column("after_rows", sa.BigInteger(), nullable=True),
        sa.Column("on_alarm", sa.Boolean(), nullable=False),
        sa.Column("time_limit", sa.Integer(), nullable=True),
        sa.Column("auto_promote", sa.Boolean(), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_trigger", sa.String(16), nullable=True),
        sa.Column("last_triggered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_version_id", sa.String(64), nullable=True),
        sa.Column("last_run_id", sa.String(64), nullable=True),
        sa.Column("last_outcome", sa.String(16), nullable=True),
        sa.Column("last_reason", sa.Text(), nullable=True),
        sa.Column("alarm_seen", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "approvals",
        sa.Column("approval_id", sa.String(64), primary_key=True),
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("champion_model", sa.String(64), nullable=True),
        sa.Column("challenger_model", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("comparison", sa.JSON(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("task_token", sa.Text(), nullable=True),
        sa.Column("execution", sa.String(2048), nullable=True),
    )
    op.create_index("ix_approvals_dataset_id", "approvals", ["dataset_id"])
    # At most one open request per dataset: a second recommendation finds the first.
    pending = sa.text("status = 'PENDING'")
    op.create_index(
        "approvals_one_pending_per_dataset",
        "approvals",
        ["dataset_id"],
        unique=True,
        postgresql_where=pending,
        sqlite_where=pending,
    )


def _refuse_changes_to_alias_events() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION alias_events_append_only() RETURNS trigger AS $$ BEGIN "
            f"RAISE EXCEPTION '{APPEND_ONLY}'; END; $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER alias_events_append_only BEFORE UPDATE OR DELETE ON alias_events "
            "FOR EACH ROW EXECUTE FUNCTION alias_events_append_only()"
        )
    else:
        for change in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER alias_events_no_{change.lower()} BEFORE {change} ON "
                f"alias_events BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
            )


def downgrade() -> None:
    op.drop_table("approvals")
    op.drop_table("retraining_policies")
    op.drop_table("traffic_policies")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER alias_events_append_only ON alias_events")
        op.execute("DROP FUNCTION alias_events_append_only()")
    op.drop_table("alias_events")
    # Back to one alias for the installation: the one moved last.
    op.rename_table("model_aliases", "model_aliases_0011")
    op.create_table(
        "model_aliases",
        sa.Column("alias", sa.String(32), primary_key=True),
        sa.Column("model_id", sa.String(64), sa.ForeignKey("models.model_id"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        "INSERT INTO model_aliases (alias, model_id, updated_at) "
        "SELECT a.alias, a.model_id, a.updated_at FROM model_aliases_0011 a "
        "WHERE a.updated_at = (SELECT MAX(b.updated_at) FROM model_aliases_0011 b "
        "WHERE b.alias = a.alias)"
    )
    op.drop_table("model_aliases_0011")
