"""What a `set_field` action writes, in the outbox's neutral "fields" payload.

A template field is a custom field provisioned in the CRM: it goes into `values` under the key the
CRM writes it by (its descriptor says: a name or an id). `amount` is the deal's own amount. A loss
reason goes where provisioning put the funnel's reasons: the CRM's own list (a "loss_reason"
mapping per reason: amoCRM) as `loss_reason_id`, or the enumeration field provisioning created for
them (Bitrix24). An enumeration value is the option's id or its text, as the CRM's descriptor says.
The choice follows the stored mappings and the descriptor, so no CRM is named here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.funnels.models import FunnelMapping
from connectors.descriptor import CRMDescriptor
from funnel_templates.automations import SetFieldAction
from funnel_templates.schema import LOSS_REASON_FIELD, FunnelTemplate

AMOUNT_FIELD = "amount"


@dataclass(frozen=True)
class Unwritable:
    """Why nothing can be queued (the funnel was provisioned before the field or reason existed)."""

    reason: str


async def field_write(
    session: AsyncSession,
    descriptor: CRMDescriptor,
    funnel_id: int,
    template: FunnelTemplate,
    action: SetFieldAction,
) -> dict[str, Any] | Unwritable:
    """The "fields" payload of `action` without the deal's id."""
    if action.field == AMOUNT_FIELD:
        # Validation let only numbers through; a string keeps the exact decimal through JSON.
        return {"values": {}, "amount": str(Decimal(str(action.value)))}
    rows = await _mappings(session, funnel_id)
    if action.field == LOSS_REASON_FIELD:
        return _loss_reason_write(descriptor, template, rows, str(action.value))
    spec = next((f for f in template.fields if f.code == action.field), None)
    row = rows.get(("field", action.field))
    if spec is None or row is None:
        return Unwritable(f"field {action.field!r} is not provisioned on this funnel")
    key = descriptor.field_write_key(row.crm_id, row.crm_name)
    if spec.type != "enum":
        return {"values": {key: action.value}}
    names = {o.code: o.name.ru for o in spec.options}
    option = enum_value(descriptor, rows, action.field, str(action.value), names)
    return option if isinstance(option, Unwritable) else {"values": {key: option}}


def _loss_reason_write(
    descriptor: CRMDescriptor,
    template: FunnelTemplate,
    rows: dict[tuple[str, str], FunnelMapping],
    reason_code: str,
) -> dict[str, Any] | Unwritable:
    native = rows.get(("loss_reason", reason_code))
    if native is not None:
        return {"values": {}, "loss_reason_id": native.crm_id}
    row = rows.get(("field", LOSS_REASON_FIELD))
    if row is None:
        return Unwritable(f"loss reason {reason_code!r} is not provisioned on this funnel")
    reasons = {r.code: r.name.ru for r in template.loss_reasons}
    option = enum_value(descriptor, rows, LOSS_REASON_FIELD, reason_code, reasons)
    if isinstance(option, Unwritable):
        return option
    return {"values": {descriptor.field_write_key(row.crm_id, row.crm_name): option}}


def enum_value(
    descriptor: CRMDescriptor,
    rows: Mapping[tuple[str, str], FunnelMapping],
    field_code: str,
    option_code: str,
    names: dict[str, str],
) -> str | Unwritable:
    """An enumeration value as the CRM takes it: the option's id where the CRM stores ids (recorded by
    provisioning), else its Russian name, the text provisioning created it with."""
    if descriptor.enum_values_by_id:
        row = rows.get(("field_option", f"{field_code}:{option_code}"))
        if row is None:
            return Unwritable(
                f"option {option_code!r} of {field_code!r} has no recorded CRM id: provision the funnel "
                "again to record it"
            )
        return row.crm_id
    return names.get(option_code, option_code)


async def _mappings(session: AsyncSession, funnel_id: int) -> dict[tuple[str, str], FunnelMapping]:
    return by_kind_and_code(
        await session.scalars(select(FunnelMapping).where(FunnelMapping.funnel_id == funnel_id))
    )


def by_kind_and_code(rows: Iterable[FunnelMapping]) -> dict[tuple[str, str], FunnelMapping]:
    return {(row.kind, row.code): row for row in rows}
