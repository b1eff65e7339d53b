"""Funnel analytics: flow (app.analytics.flow), loss reasons and the temperature split, in SQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from functools import partial
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.analytics.daily_flow import stage_flow
from app.analytics.daily_won import won_entries
from app.analytics.flow import Buckets, build_flow, flow_buckets
from app.analytics.funnels import FunnelContext
from app.analytics.live_deals import lost_by_reason, stage_totals
from app.analytics.loss_reasons import label_loss_reasons
from app.analytics.schemas import (
    FunnelAnalytics,
    LossReasonCount,
    Period,
    TemperatureCount,
)
from app.analytics.transitions import Medians, deleted_deals

TEMPERATURES = ("cold", "warm", "hot")
T = TypeVar("T")


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
    counts = await lost_by_reason(session, ctx.ref.id, failure_ids, period)
    labelled = await label_loss_reasons(session, ctx, counts)
    return labelled, sum(n for _, n in counts)


async def funnel_analytics(
    sessions: async_sessionmaker[AsyncSession], ctx: FunnelContext, period: Period
) -> FunnelAnalytics:
    """Up to four connections at once, so the page waits for the slowest part rather than the sum:
    the entries, exits and medians (from the daily stage counts and their monthly sums), the won
    entries (from the outcome counts; both after the short read of the deleted deals they
    subtract), the loss reasons, and the stage totals (both from the live-deal counts; aiosqlite and
    asyncpg execute off the event loop, and SQLite releases the GIL while it reads). Each part is a
    consistent read; together they may straddle a write, which a dashboard can live with."""

    async def read(query: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with sessions() as session:
            return await query(session)

    async def flow() -> tuple[Buckets, Medians, dict[int, int]]:
        deleted = await read(lambda s: deleted_deals(s, ctx))
        (entries, exits, medians), won = await asyncio.gather(
            read(partial(stage_flow, ctx=ctx, period=period, deleted=deleted)),
            read(partial(won_entries, ctx=ctx, period=period, deleted=deleted)),
        )
        return flow_buckets(ctx, entries, exits), medians, won

    (buckets, medians, won), (losses, lost), totals = await asyncio.gather(
        flow(),
        read(lambda s: _loss_reasons(s, ctx, period)),
        read(lambda s: stage_totals(s, ctx.ref.id)),
    )
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
