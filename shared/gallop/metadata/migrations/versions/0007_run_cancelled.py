"""training_runs.status may be CANCELLED: a run stopped on request

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BEFORE = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED")
AFTER = (*BEFORE, "CANCELLED")
NAME = "ck_training_runs_status"


def _condition(statuses: tuple[str, ...]) -> str:
    return f"status IN ({', '.join(repr(s) for s in statuses)})"


def _allow(statuses: tuple[str, ...]) -> None:
    # SQLite cannot alter a constraint: batch mode copies the table (its named CHECK
    # constraints reflected), without the old one and with the new.
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_constraint(NAME, type_="check")
        batch.create_check_constraint(NAME, _condition(statuses))


def upgrade() -> None:
    _allow(AFTER)


def downgrade() -> None:
    # What the older code cannot read goes back to what it can: a run that did not finish.
    op.execute(
        "UPDATE training_runs SET status = 'FAILED', reason = 'cancelled' "
        "WHERE status = 'CANCELLED'"
    )
    _allow(BEFORE)
