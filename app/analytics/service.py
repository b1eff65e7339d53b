"""Funnel analytics: flow (app.analytics.flow), loss reasons and the temperature split, in SQL."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.analytics.flow import Buckets, build_flow, flow_rows, won_entries
from app.analytics.funnels import FunnelContext
from app.analytics.loss_reasons import label_loss_reasons, loss_reason_field_ids
from app.analytics.schemas import (
    FunnelAnalytics,
    LossReasonCount,
    Period,
    TemperatureCount,
)
from app.deals.models import Deal

TEMPERATURES = ("cold", "warm", "hot")


async def stage_totals(session: AsyncSession, funnel_id: int) -> dict[int | None, tuple[int, Decimal]]:
    """Live deals per current stage (None: a CRM stage the funnel does not map) with amount sums."""
    rows = await session.execute(
        select(Deal.stage_id, func.count(), func.coalesce(func.sum(Deal.amount), 0))
        .where(Deal.funnel_id == funnel_id, Deal.deleted_at.is_(None))
        .group_by(Deal.stage_id)
    )
    return {stage_id: (int(n), Decimal(total or 0)) for stage_id, n, total in rows}


def temperature_split(
    ctx: FunnelContext, totals: dict[int | None, tuple[int, Decimal]]
) -> list[TemperatureCount]:
    deals = dict.fromkeys((*TEMPERATURES, "unknown"), 0)
    amounts = dict.fromkeys(deals, Decimal(0))
    for stage_id, (count, amount) in totals.items():
        stage = ctx.stage(stage_id) if stage_id is not None else None
        key = stage.temperature if stage and stage.temperature else "unknown"
        deals[key] += count
        amounts[key] += amount
    return [
        TemperatureCount(temperature=t, deals=n, amount=amounts[t])
        for t, n in deals.items()
        if t != "unknown" or n
    ]


async def _loss_reasons(
    session: AsyncSession, ctx: FunnelContext, period: Period
) -> tuple[list[LossReasonCount], int]:
    failure_ids = [s.id for s in ctx.stages if s.semantics == "failure"]
    if not failure_ids:
        return [], 0
    keys = ["loss_reason_id", "loss_reason", *await loss_reason_field_ids(session, ctx.ref.id)]
    reason = func.coalesce(*[Deal.fields[k].as_string() for k in keys], literal(None))
    rows = await session.execute(
        select(reason, func.count())
        .where(
            Deal.funnel_id == ctx.ref.id,
            Deal.stage_id.in_(failure_ids),
            Deal.deleted_at.is_(None),
            Deal.stage_entered_at >= period.start,
            Deal.stage_entered_at < period.end,
        )
        .group_by(reason)
    )
    counts = [(None if value is None else str(value), int(n)) for value, n in rows]
    labelled = await label_loss_reasons(session, ctx, counts)
    return labelled, sum(n for _, n in counts)


async def funnel_analytics(
    sessions: async_sessionmaker[AsyncSession], ctx: FunnelContext, period: Period
) -> FunnelAnalytics:
    """The flow query dominates; it runs on its own connection while the small ones run on another
    (aiosqlite and asyncpg both execute off the event loop), so the page waits for the slowest
    query rather than the sum. Each part is a consistent read; together they may straddle a write,
    which a dashboard can live with."""

    async def flow() -> tuple[Buckets, dict[int, tuple[float, int]]]:
        async with sessions() as session:
            return await flow_rows(session, ctx, period)

    async def rest() -> tuple[
        list[LossReasonCount], int, dict[int | None, tuple[int, Decimal]], dict[int, int]
    ]:
        async with sessions() as session:
            losses, lost = await _loss_reasons(session, ctx, period)
            totals = await stage_totals(session, ctx.ref.id)
            return losses, lost, totals, await won_entries(session, ctx, period)

    (buckets, medians), (losses, lost, totals, won) = await asyncio.gather(flow(), rest())
    conversion, times = build_flow(ctx, buckets, medians, won)
    return FunnelAnalytics(
        funnel=ctx.ref,
        period=period,
        stages=ctx.stages,
        conversion=conversion,
        time_in_stage=times,
        loss_reasons=losses,
        lost_deals=lost,
        temperature=temperature_split(ctx, totals),
    )
