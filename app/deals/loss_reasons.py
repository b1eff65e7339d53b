"""The loss reason a mirrored deal carries, kept in a column of its own (issue #14).

Analytics counts lost deals by reason and the board names each lost deal's reason. Both used to read
the reason out of every deal's JSON fields; the mirror now writes it beside them, so the count is a
GROUP BY over the covering index `ix_deals_funnel_stage_entered`.

Where the reason is, first found wins: amoCRM's native loss reason (`loss_reason_id`, set by the
mirror), the template field's own code (`loss_reason`), then each CRM field that provisioning mapped
to carry it (a FunnelMapping of kind "field" and code LOSS_REASON_FIELD), by its id or its name.
Empty values do not count; of a list (an enumeration field's values) the first item does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.deals.models import Deal
from app.funnels.models import FunnelMapping
from funnel_templates.schema import LOSS_REASON_FIELD

LOSS_REASON_KEYS = ("loss_reason_id", LOSS_REASON_FIELD)
LOSS_REASON_LENGTH = 255  # reasons are ids and codes; a longer value is cut to fit the index


def loss_reason_of(fields: Mapping[str, Any], field_ids: Iterable[str] = ()) -> str | None:
    """The deal's loss reason as its fields carry it (see the module docstring), or None."""
    for key in (*LOSS_REASON_KEYS, *field_ids):
        value = fields.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None and value != "":
            return str(value)[:LOSS_REASON_LENGTH]
    return None


async def loss_reason_fields(session: AsyncSession, funnel_ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
    """Per funnel, the keys deal snapshots carry the loss-reason field under, in a fixed order: its
    CRM id (amoCRM keys custom fields by id) and its name (Bitrix24 keys them UF_CRM_*)."""
    found: dict[int, set[str]] = {}
    if funnel_ids:
        rows = await session.execute(
            select(FunnelMapping.funnel_id, FunnelMapping.crm_id, FunnelMapping.crm_name).where(
                FunnelMapping.funnel_id.in_(list(funnel_ids)),
                FunnelMapping.kind == "field",
                FunnelMapping.code == LOSS_REASON_FIELD,
            )
        )
        for funnel_id, crm_id, crm_name in rows:
            found.setdefault(funnel_id, set()).update(str(k) for k in (crm_id, crm_name) if k)
    return {funnel_id: tuple(sorted(ids)) for funnel_id, ids in found.items()}


async def refresh_loss_reasons(session: AsyncSession, funnel_id: int) -> int:
    """Re-derive the column for a funnel's deals after its loss-reason field mapping changed
    (provisioning); returns how many deals changed."""
    field_ids = (await loss_reason_fields(session, [funnel_id])).get(funnel_id, ())
    rows = await session.execute(
        select(Deal.id, Deal.fields, Deal.loss_reason).where(Deal.funnel_id == funnel_id)
    )
    changed = [
        {"id": deal_id, "loss_reason": reason}
        for deal_id, fields, held in rows
        if (reason := loss_reason_of(fields or {}, field_ids)) != held
    ]
    if changed:
        await session.execute(update(Deal), changed)  # ORM bulk UPDATE by primary key
    return len(changed)
