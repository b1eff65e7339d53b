"""Naming loss reasons: a deal carries the CRM's value (amoCRM loss_reason_id, a Bitrix24 enumeration
list item id), the template knows the reasons by code and name; the funnel mappings link the two."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.funnels import FunnelContext
from app.analytics.schemas import LossReasonCount
from app.funnels.models import FunnelMapping
from app.rules.service import option_ids
from funnel_templates.schema import LOSS_REASON_FIELD, LossReason


async def label_loss_reasons(
    session: AsyncSession,
    ctx: FunnelContext,
    counts: list[tuple[str | None, int]],
    options: dict[str, dict[str, str]] | None = None,
) -> list[LossReasonCount]:
    """`options`: the funnel's option_ids_of, when the caller read them already."""
    reasons = ctx.template.loss_reasons if ctx.template else []
    if options is None:
        options = await option_ids_of(session, ctx.ref.id)
    by_crm_id = options.get(LOSS_REASON_FIELD, {})
    merged: dict[str | None, LossReasonCount] = {}
    for value, deals in counts:
        reason = _match(value, reasons, by_crm_id)
        key = reason.code if reason else value
        if key in merged:  # e.g. a CRM id and a code naming the same reason
            merged[key].deals += deals
            continue
        if reason is not None:
            item = LossReasonCount(
                value=value, code=reason.code, label_ru=reason.name.ru, label_en=reason.name.en, deals=deals
            )
        elif value is None:
            item = LossReasonCount(
                value=None, code=None, label_ru="Не указана", label_en="Not set", deals=deals
            )
        else:
            item = LossReasonCount(value=value, code=None, label_ru=value, label_en=value, deals=deals)
        merged[key] = item
    return sorted(merged.values(), key=lambda r: (-r.deals, r.label_en))


def _match(value: str | None, reasons: list[LossReason], by_crm_id: dict[str, str]) -> LossReason | None:
    if value is None:
        return None
    code = by_crm_id.get(value, value)
    for reason in reasons:
        if code == reason.code or value in (reason.name.ru, reason.name.en):
            return reason
    return None


async def option_ids_of(session: AsyncSession, funnel_id: int) -> dict[str, dict[str, str]]:
    """Field code -> {CRM option id -> option code} of one funnel (app.rules.service.option_ids)."""
    rows = await session.scalars(select(FunnelMapping).where(FunnelMapping.funnel_id == funnel_id))
    return option_ids(list(rows))
