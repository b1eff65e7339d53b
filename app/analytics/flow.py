"""How deals flow through a funnel in a period: step conversion and median time in stage.

The counts come from app.analytics.daily_flow (entries and exits per stage, from the daily stage
counts; app.analytics.transitions computes the same from the transitions alone); this module
turns them into the page's rows. Definitions, over entries into a stage inside the period (a deal that
comes back to a stage counts again):

- reached(stage): the entries.
- to_next(stage): the entries whose exit moved the deal forward to the next process/success stage or
  beyond (skipping a stage counts; a move to a failure stage, backwards or no move yet does not; a
  move to another pipeline is not a step forward).
- to_won(stage): the entries whose deal is now in the success stage, entered after.
- time in stage: from an entry to its exit; the median over the exits of entries in the period
  (entries still waiting have no end and are not counted).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.daily_flow import stage_flow
from app.analytics.funnels import FunnelContext
from app.analytics.schemas import Period, StageConversion, StageInfo, StageTime
from app.analytics.transitions import Exits, Medians, deleted_deals
from app.deals.models import Deal, StageTransition

Buckets = dict[int, list[tuple[int | None, int]]]  # stage id -> (progress of the next stage, entries)


async def funnel_flow(
    session: AsyncSession, ctx: FunnelContext, period: Period
) -> tuple[list[StageConversion], list[StageTime]]:
    buckets, medians = await flow_rows(session, ctx, period)
    won = await won_entries(session, ctx, period)
    return build_flow(ctx, buckets, medians, won)


async def flow_rows(session: AsyncSession, ctx: FunnelContext, period: Period) -> tuple[Buckets, Medians]:
    """Entries per (stage, progress of the next stage), and median seconds in stage with samples."""
    if not ctx.stages:
        return {}, {}
    deleted = await deleted_deals(session, ctx)
    entries, exits, medians = await stage_flow(session, ctx, period, deleted)
    return flow_buckets(ctx, entries, exits), medians


def flow_buckets(ctx: FunnelContext, entries: dict[int, int], exits: Exits) -> Buckets:
    """Entries per stage split by where their exit went: the progress of the stage moved to, and None
    for a failure or foreign stage or no exit yet (the entries not accounted for by a move)."""
    buckets: Buckets = {}
    for stage in ctx.stages:
        moved = sorted((p, n) for p, n in exits.get(stage.id, {}).items() if p is not None)
        # In a consistent history every exit pairs with an entry, so this is never negative. An exit
        # can outnumber the entries only when a stage mapping changed between entry and exit (the
        # entry then points at another stage id); never report less reached than moved on.
        waiting = max(0, entries.get(stage.id, 0) - sum(n for _, n in moved))
        rows: list[tuple[int | None, int]] = [*moved, *([(None, waiting)] if waiting else [])]
        if rows:
            buckets[stage.id] = rows
    return buckets


def build_flow(
    ctx: FunnelContext, buckets: Buckets, medians: Medians, won: dict[int, int]
) -> tuple[list[StageConversion], list[StageTime]]:
    return _conversion(ctx, buckets, won), _times(ctx, medians)


async def won_entries(session: AsyncSession, ctx: FunnelContext, period: Period) -> dict[int, int]:
    """Entries in the period per stage whose deal is now won. A won deal's stage_entered_at is its
    latest stage change, so the win necessarily came after each of those entries."""
    success = ctx.success
    if success is None:
        return {}
    t, d = StageTransition, Deal
    won_deals = select(d.id).where(
        d.funnel_id == ctx.ref.id,
        d.deleted_at.is_(None),
        d.stage_id == success.id,
        d.stage_entered_at >= period.start,
    )
    rows = await session.execute(
        select(t.to_stage_id, func.count())
        .where(t.deal_id.in_(won_deals), t.at >= period.start, t.at < period.end)
        .group_by(t.to_stage_id)
    )
    return {stage_id: int(n) for stage_id, n in rows if stage_id is not None}


def _conversion(ctx: FunnelContext, buckets: Buckets, won: dict[int, int]) -> list[StageConversion]:
    result = []
    for stage in ctx.stages:
        nxt = _next_stage(ctx.stages, stage)
        entries = buckets.get(stage.id, [])
        reached = sum(n for _, n in entries)
        to_next = sum(
            n for after, n in entries if nxt is not None and after is not None and after >= nxt.sort
        )
        to_won = won.get(stage.id, 0)
        final = stage.semantics != "process"
        result.append(
            StageConversion(
                stage=stage.code,
                reached=reached,
                next_stage=nxt.code if nxt else None,
                to_next=to_next,
                to_next_pct=_pct(to_next, reached) if nxt else None,
                to_won=to_won,
                to_won_pct=None if final else _pct(to_won, reached),
            )
        )
    return result


def _next_stage(stages: list[StageInfo], stage: StageInfo) -> StageInfo | None:
    if stage.semantics != "process":
        return None
    return next((s for s in stages if s.sort > stage.sort and s.semantics != "failure"), None)


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def _times(ctx: FunnelContext, medians: Medians) -> list[StageTime]:
    result = []
    for stage in ctx.stages:
        median, samples = medians.get(stage.id, (None, 0))
        if stage.semantics != "process" and not samples:
            continue  # deals rarely leave final stages; an empty row there is noise
        result.append(
            StageTime(
                stage=stage.code,
                samples=samples,
                median_seconds=round(median, 3) if median is not None else None,
            )
        )
    return result
