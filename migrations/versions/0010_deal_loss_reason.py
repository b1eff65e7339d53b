"""deals.loss_reason: the reason a deal carries in its fields, in a column of the covering index,
so analytics counts lost deals by reason from the index alone (issue #14)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 14:30:00.000000
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_deals_funnel_stage_entered"
COLUMNS = ["funnel_id", "stage_id", "stage_entered_at", "deleted_at", "amount"]
BATCH = 5_000  # deals read per statement
# Frozen copies of app.deals.loss_reasons: a migration must not change meaning when the application's
# code moves on.
LOSS_REASON_KEYS = ("loss_reason_id", "loss_reason")
LOSS_REASON_LENGTH = 255

DEALS = sa.table(
    "deals",
    sa.column("id", sa.Integer()),
    sa.column("funnel_id", sa.Integer()),
    sa.column("fields", sa.JSON()),
    sa.column("loss_reason", sa.String(LOSS_REASON_LENGTH)),
)
MAPPINGS = sa.table(
    "funnel_mappings",
    sa.column("funnel_id", sa.Integer()),
    sa.column("kind", sa.String()),
    sa.column("code", sa.String()),
    sa.column("crm_id", sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table("deals", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("loss_reason", sa.String(length=LOSS_REASON_LENGTH), nullable=True))
    _backfill()
    with op.batch_alter_table("deals", schema=None, recreate="never") as batch_op:
        batch_op.drop_index(INDEX)
        batch_op.create_index(INDEX, [*COLUMNS, "loss_reason"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deals", schema=None, recreate="never") as batch_op:
        batch_op.drop_index(INDEX)
        batch_op.create_index(INDEX, COLUMNS, unique=False)
    # A plain DROP COLUMN (the index no longer names it): a SQLite table rebuild would drop "deals"
    # and cascade the delete to its transitions.
    with op.batch_alter_table("deals", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("loss_reason")


def _loss_reason_of(fields: Mapping[str, Any], field_ids: Iterable[str]) -> str | None:
    for key in (*LOSS_REASON_KEYS, *field_ids):
        value = fields.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None and value != "":
            return str(value)[:LOSS_REASON_LENGTH]
    return None


def _backfill() -> None:
    """Derive the column for every deal, BATCH at a time in id order (keyset reads)."""
    bind = op.get_bind()
    m = MAPPINGS
    field_ids: dict[int, list[str]] = {}
    for funnel_id, crm_id in bind.execute(
        sa.select(m.c.funnel_id, m.c.crm_id).where(
            m.c.kind == "field", m.c.code == "loss_reason", m.c.crm_id.is_not(None)
        )
    ):
        field_ids.setdefault(funnel_id, []).append(str(crm_id))
    for ids in field_ids.values():
        ids.sort()
    d = DEALS
    update = d.update().where(d.c.id == sa.bindparam("deal_id")).values(loss_reason=sa.bindparam("reason"))
    last_id = 0
    while True:
        rows = list(
            bind.execute(
                sa.select(d.c.id, d.c.funnel_id, d.c.fields)
                .where(d.c.id > last_id)
                .order_by(d.c.id)
                .limit(BATCH)
            )
        )
        if not rows:
            return
        last_id = rows[-1].id
        values = []
        for deal_id, funnel_id, fields in rows:
            if isinstance(fields, str):  # a driver that hands JSON back as text
                fields = json.loads(fields)
            reason = _loss_reason_of(fields or {}, field_ids.get(funnel_id, ()))
            if reason is not None:
                values.append({"deal_id": deal_id, "reason": reason})
        if values:
            bind.execute(update, values)
