"""Entries in a period per stage whose deal is now won, from the outcome counts the mirror keeps.

Same numbers as app.analytics.flow.won_entries (which reads the won deals' transitions, and is kept
as the reference the tests compare with): the whole UTC days come from the rows of
app.analytics.models.DailyOutcomeEntries whose outcome is the success stage, the partial days at the
period's edges from their transitions (or as whole days less the rest of the day: plan_period), and
the deleted deals' share of the whole days is read by deal id and taken out, as in
app.analytics.daily_flow. Only the funnel's stages are
reported (the reference also counts a won deal's entries into other funnels' stages, which no page
shows).

Reading 180 days of a 100,000-deal funnel this way is a range of about 2,000 rows; the reference
probes the transitions of every deal won in the period (13,000 deals, 70,000 transitions: 40-50 ms
on SQLite, 75-90 ms on PostgreSQL, where it scans the whole transitions table in a hash join).
"""

from __future__ import annotations

from collections import Counter
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.daily_counts import Move, outcome_tally
from app.analytics.daily_flow import plan_period
from app.analytics.funnels import FunnelContext
from app.analytics.models import DailyOutcomeEntries
from app.analytics.schemas import Period
from app.analytics.transitions import Deleted, DeletedDeals
from app.deals.models import Deal, StageTransition


async def won_entries(
    session: AsyncSession, ctx: FunnelContext, period: Period, deleted: DeletedDeals
) -> dict[int, int]:
    """Entries in the period into each of the funnel's stages whose deal is now won."""
    success = ctx.success
    if success is None:
        return {}
    won: Counter[int] = Counter()
    plan = plan_period(period)
    if plan.days is not None:
        first, last = days = plan.days
        x = DailyOutcomeEntries
        for stage_id, n in await session.execute(
            select(x.stage_id, func.sum(x.entries))
            .where(x.outcome_stage_id == success.id, x.day >= first, x.day < last)
            .group_by(x.stage_id)
        ):
            won[stage_id] += int(n)
        gone = Deleted(ctx, deleted)
        if gone:
            await _subtract_deleted(session, gone, success.id, days, won)
    # Partial days; and the rest of a day read whole: the live deals' entries there (the deleted
    # deals' share of the whole day is out already).
    for edge in plan.add:
        won.update(await _edge(session, ctx, success.id, edge))
    for rest in plan.subtract:
        won.subtract(await _edge(session, ctx, success.id, rest))
    stages = {s.id for s in ctx.stages}
    return {stage_id: n for stage_id, n in won.items() if n and stage_id in stages}


async def _edge(session: AsyncSession, ctx: FunnelContext, success_id: int, edge: Period) -> dict[int, int]:
    """The reference's count for a partial day, from the other end: the few hours of entries into
    the funnel's stages (an index range per stage), each deal looked up by its key. The reference
    would read the transitions of every deal won since the edge's start (a 30-day page's first edge:
    thousands of deals, 30 ms on PostgreSQL). Entries into other funnels' stages, which the page
    never shows, are left out."""
    t, d = StageTransition, Deal
    rows = await session.execute(
        select(t.to_stage_id, func.count())
        .join(d, d.id == t.deal_id)
        .where(
            t.to_stage_id.in_([s.id for s in ctx.stages]),
            t.at >= edge.start,
            t.at < edge.end,
            d.funnel_id == ctx.ref.id,
            d.deleted_at.is_(None),
            d.stage_id == success_id,
            d.stage_entered_at >= edge.start,
        )
        .group_by(t.to_stage_id)
    )
    return {stage_id: int(n) for stage_id, n in rows if stage_id is not None}


async def _subtract_deleted(
    session: AsyncSession, gone: Deleted, success_id: int, days: tuple[date, date], won: Counter[int]
) -> None:
    """Take out the deleted deals' entries on the whole days, where the rows counted them: those of
    deals whose outcome is the success stage, by the rows' own rule (outcome_tally)."""
    t = StageTransition
    histories: dict[int, list[Move]] = {}
    for deal_id, id_, to_stage_id, at in await session.execute(
        select(t.deal_id, t.id, t.to_stage_id, t.at).where(t.deal_id.in_(gone.ids_or_query()))
    ):
        histories.setdefault(deal_id, []).append((id_, to_stage_id, at))
    counted: Counter[tuple[int, date, int]] = Counter()
    for moves in histories.values():
        outcome_tally(moves, 1, counted)
    first, last = days
    for (outcome, day, stage_id), n in counted.items():
        if outcome == success_id and first <= day < last:
            won[stage_id] -= n
