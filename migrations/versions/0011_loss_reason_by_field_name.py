"""deals.loss_reason also from a reason field keyed by its name: Bitrix24 deals carry user fields as
UF_CRM_*, which 0010 did not look under, so their reasons were left empty

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 16:00:00.000000
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 5_000  # deals read per statement
LOSS_REASON_LENGTH = 255  # frozen, as in 0010

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
    sa.column("crm_name", sa.String()),
)


def upgrade() -> None:
    """Only deals with no reason yet, in funnels whose reason field has a name: a reason 0010 found
    under the field's id or the deal's own keys came first and stays."""
    bind = op.get_bind()
    m = MAPPINGS
    names: dict[int, str] = {
        funnel_id: str(name)
        for funnel_id, name in bind.execute(
            sa.select(m.c.funnel_id, m.c.crm_name).where(
                m.c.kind == "field", m.c.code == "loss_reason", m.c.crm_name.is_not(None)
            )
        )
    }
    if not names:
        return
    d = DEALS
    update = d.update().where(d.c.id == sa.bindparam("deal_id")).values(loss_reason=sa.bindparam("reason"))
    last_id = 0
    while True:
        rows = list(
            bind.execute(
                sa.select(d.c.id, d.c.funnel_id, d.c.fields)
                .where(d.c.id > last_id, d.c.loss_reason.is_(None), d.c.funnel_id.in_(list(names)))
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
            value = (fields or {}).get(names[funnel_id])
            if isinstance(value, list):
                value = value[0] if value else None
            if value is not None and value != "":
                values.append({"deal_id": deal_id, "reason": str(value)[:LOSS_REASON_LENGTH]})
        if values:
            bind.execute(update, values)


def downgrade() -> None:
    """Nothing to undo in the schema; the reasons found stay (0010's downgrade drops the column)."""
