"""stage transitions: when the deal entered the stage it left; indexes for funnel analytics

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 15:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The mirror sets from_stage_entered_at to the deal's stage_entered_at before the move, which is the
# `at` of the deal's previous transition (transitions are appended in (at, id) order). Existing rows get
# exactly that; a deal's first transition has no previous one and stays NULL. One correlated subquery,
# served by ix_stage_transitions_deal_at, the same SQL on SQLite and PostgreSQL.
BACKFILL = """
UPDATE stage_transitions
SET from_stage_entered_at = (
    SELECT previous.at
    FROM stage_transitions AS previous
    WHERE previous.deal_id = stage_transitions.deal_id
      AND (
        previous.at < stage_transitions.at
        OR (previous.at = stage_transitions.at AND previous.id < stage_transitions.id)
      )
    ORDER BY previous.at DESC, previous.id DESC
    LIMIT 1
)
"""


def upgrade() -> None:
    with op.batch_alter_table("stage_transitions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("from_stage_entered_at", sa.DateTime(timezone=True), nullable=True))

    op.execute(BACKFILL)

    with op.batch_alter_table("stage_transitions", schema=None) as batch_op:
        # The analytics read these from the index alone (SQLite has no INCLUDE; trailing columns
        # serve the same purpose on both databases).
        batch_op.drop_index("ix_stage_transitions_deal_at")
        batch_op.create_index("ix_stage_transitions_deal_at", ["deal_id", "at", "to_stage_id"], unique=False)
        batch_op.create_index(
            "ix_stage_transitions_to_stage_at", ["to_stage_id", "at", "deal_id"], unique=False
        )
        batch_op.create_index(
            "ix_stage_transitions_from_stage_entered",
            ["from_stage_id", "from_stage_entered_at", "at", "to_stage_id", "deal_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("stage_transitions", schema=None) as batch_op:
        batch_op.drop_index("ix_stage_transitions_from_stage_entered")
        batch_op.drop_index("ix_stage_transitions_to_stage_at")
        batch_op.drop_index("ix_stage_transitions_deal_at")
        batch_op.create_index("ix_stage_transitions_deal_at", ["deal_id", "at"], unique=False)
        batch_op.drop_column("from_stage_entered_at")
