"""Stage totals (per currency too) and lost deals per reason, from the live-deal counts the
triggers on `deals` keep (app.analytics.models.DailyLiveDeals).

Same numbers as a count over the deals themselves (tests/analytics/test_live_deals.py compares
them): the stage totals sum every day's row of the funnel; the loss reasons sum the rows of the
failure stages for the whole UTC days inside the period, and count the deals entered in the partial
days at its edges from the deals' covering index (or a whole day less the rest of it: plan_period).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.daily_flow import plan_period
from app.analytics.models import NO_CURRENCY, NO_REASON, NO_STAGE, DailyLiveDeals
from app.analytics.schemas import Period
from app.deals.models import Deal


async def stage_totals(session: AsyncSession, funnel_id: int) -> dict[int | None, tuple[int, Decimal]]:
    """Live deals per current stage (None: a CRM stage the funnel does not map) with amount sums."""
    totals: dict[int | None, tuple[int, Decimal]] = {}
    for stage_id, by_currency in (await _hundredths(session, funnel_id)).items():
        hundredths = sum(h for _, h in by_currency.values())
        totals[stage_id] = (sum(n for n, _ in by_currency.values()), _amount(hundredths))
    return totals


async def stage_currency_totals(
    session: AsyncSession, funnel_id: int
) -> dict[int | None, dict[str | None, tuple[int, Decimal]]]:
    """Live deals per current stage (None: unmapped) and currency (None: none), with amount sums."""
    return {
        stage_id: {currency: (n, _amount(hundredths)) for currency, (n, hundredths) in by_currency.items()}
        for stage_id, by_currency in (await _hundredths(session, funnel_id)).items()
    }


async def _hundredths(
    session: AsyncSession, funnel_id: int
) -> dict[int | None, dict[str | None, tuple[int, int]]]:
    """stage -> currency -> (deals, amount in hundredths), for those with deals."""
    x = DailyLiveDeals
    rows = await session.execute(
        select(x.stage_id, x.currency, func.sum(x.deals), func.sum(x.amount_hundredths))
        .where(x.funnel_id == funnel_id)
        .group_by(x.stage_id, x.currency)
    )
    totals: dict[int | None, dict[str | None, tuple[int, int]]] = {}
    for stage_id, currency, n, hundredths in rows:
        if n:  # all of whose deals left: their rows are at zero
            key = None if stage_id == NO_STAGE else stage_id
            totals.setdefault(key, {})[None if currency == NO_CURRENCY else currency] = (
                int(n),
                int(hundredths),
            )
    return totals


def _amount(hundredths: int) -> Decimal:
    """As the NUMERIC(18, 2) sum reads (750.00), and a plain 0 for nothing, as a sum over deals
    without amounts did (COALESCE(SUM(amount), 0)); deals whose amounts add up to exactly 0.00 now
    read 0 too."""
    return Decimal(hundredths).scaleb(-2) if hundredths else Decimal(0)


async def lost_by_reason(
    session: AsyncSession, funnel_id: int, failure_ids: Sequence[int], period: Period
) -> list[tuple[str | None, int]]:
    """Live deals now in a failure stage that they entered in the period, per loss reason (None:
    not set), largest first in no particular order among equals."""
    lost: Counter[str | None] = Counter()
    plan = plan_period(period)
    if plan.days is not None:
        first, last = plan.days
        x = DailyLiveDeals
        for reason, n in await session.execute(
            select(x.loss_reason, func.sum(x.deals))
            .where(x.funnel_id == funnel_id, x.stage_id.in_(failure_ids), x.day >= first, x.day < last)
            .group_by(x.loss_reason)
        ):
            lost[None if reason == NO_REASON else reason] += int(n)
    for edge in plan.add:
        lost.update(await _entered_in(session, funnel_id, failure_ids, edge))
    for rest in plan.subtract:
        lost.subtract(await _entered_in(session, funnel_id, failure_ids, rest))
    return [(reason, n) for reason, n in lost.most_common() if n]


async def _entered_in(
    session: AsyncSession, funnel_id: int, failure_ids: Sequence[int], stretch: Period
) -> dict[str | None, int]:
    """A partial day's lost deals per reason: a short range of ix_deals_funnel_stage_entered."""
    rows = await session.execute(
        select(Deal.loss_reason, func.count())
        .where(
            Deal.funnel_id == funnel_id,
            Deal.stage_id.in_(failure_ids),
            Deal.deleted_at.is_(None),
            Deal.stage_entered_at >= stretch.start,
            Deal.stage_entered_at < stretch.end,
        )
        .group_by(Deal.loss_reason)
    )
    return {reason: int(n) for reason, n in rows}
