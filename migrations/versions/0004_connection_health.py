"""connection health: the last successful CRM call and push, and the failures since

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 04:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMES = ("last_success_at", "last_push_at", "failing_since", "last_failure_at")


def upgrade() -> None:
    # Existing connections start with no facts (NULL, 0 failures): shown as active, "never" pushed,
    # until their first CRM call records one.
    with op.batch_alter_table("connections", schema=None, recreate="never") as batch_op:
        for name in _TIMES:
            batch_op.add_column(sa.Column(name, sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_failure", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("last_failure_class", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never a rebuild: SQLite drops the old table
    # during a rebuild, and with foreign keys on that cascades to every row that references a
    # connection (funnels, deals, transitions, events, commands).
    with op.batch_alter_table("connections", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("consecutive_failures")
        batch_op.drop_column("last_failure_class")
        batch_op.drop_column("last_failure")
        for name in reversed(_TIMES):
            batch_op.drop_column(name)
