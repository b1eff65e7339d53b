"""How deals flow through a funnel in a period: step conversion and median time in stage, in SQL.

One statement for both, the same on SQLite and PostgreSQL but for the median aggregate. A single window pass over the funnel's
transitions (oldest first, the order of ix_stage_transitions_deal_at, so SQLite needs no sort) gives
each transition the time and stage of the deal's next transition (LEAD). Definitions:

- reached(stage): entries into the stage inside the period (transitions into it; a deal that comes
  back to a stage counts again: counting distinct deals costs a sort that a 100k-deal funnel feels).
- to_next(stage): of those entries, the ones whose next stage change moved the deal forward to the
  next process/success stage or beyond (skipping a stage counts; a move to a failure stage, backwards
  or no move yet does not).
- to_won(stage): of those entries, the ones whose deal is now in the success stage, entered after.
- time in stage: from a transition into the stage to the deal's next transition; the median over
  entries in the period: percentile_cont on PostgreSQL, row numbers on SQLite (which lacks it).

Transitions before the period's start are dropped before windowing (LEAD only looks forward), which is
what keeps a short period cheap on a long history.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, Integer, case, cast, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from app.analytics.funnels import FunnelContext
from app.analytics.schemas import Period, StageConversion, StageInfo, StageTime
from app.deals.models import Deal, StageTransition

Buckets = dict[int, list[tuple[int | None, int]]]  # stage id -> (progress of the next stage, entries)


def _seconds_between(start: Any, end: Any, dialect: str) -> ColumnElement[float]:
    if dialect == "postgresql":
        return cast(func.extract("epoch", end - start), Float)
    # SQLite keeps datetimes as ISO text; julianday() reads it (resolution well under a millisecond).
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def _entries(ctx: FunnelContext, period: Period) -> Any:
    t, d = StageTransition, Deal
    oldest_first = (t.at, t.id)
    # The progress a next stage stands for: its sort, or NULL for failure and foreign stages.
    progress = {s.id: s.sort for s in ctx.stages if s.semantics != "failure"}
    live_deals = select(d.id).where(
        d.funnel_id == ctx.ref.id,
        d.deleted_at.is_(None),
        # A deal last modified before the period has no transition in it (at <= crm_updated_at).
        d.crm_updated_at >= period.start,
    )
    # An IN list rather than a join: SQLite then walks the (deal_id, at) index in order, no sort.
    windowed = (
        select(
            t.deal_id.label("deal_id"),
            t.to_stage_id.label("stage_id"),
            t.at.label("at"),
            func.lead(t.at).over(partition_by=t.deal_id, order_by=oldest_first).label("next_at"),
            func.lead(t.to_stage_id).over(partition_by=t.deal_id, order_by=oldest_first).label("next_stage"),
        )
        .where(t.deal_id.in_(live_deals), t.at >= period.start)
        .subquery("windowed")
    )
    next_progress = case(progress, value=windowed.c.next_stage) if progress else literal(None)
    return (
        select(
            windowed.c.deal_id,
            windowed.c.stage_id,
            windowed.c.at,
            windowed.c.next_at,
            cast(next_progress, Integer).label("next_progress"),
        )
        .where(windowed.c.at < period.end, windowed.c.stage_id.in_([s.id for s in ctx.stages]))
        .cte("entries")
    )


async def funnel_flow(
    session: AsyncSession, ctx: FunnelContext, period: Period
) -> tuple[list[StageConversion], list[StageTime]]:
    buckets, medians = await flow_rows(session, ctx, period)
    won = await won_entries(session, ctx, period)
    return build_flow(ctx, buckets, medians, won)


async def flow_rows(
    session: AsyncSession, ctx: FunnelContext, period: Period
) -> tuple[Buckets, dict[int, tuple[float, int]]]:
    """Entries per (stage, progress of the next stage), and median seconds in stage with samples."""
    if not ctx.stages:
        return {}, {}
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    entries = _entries(ctx, period)
    durations = (
        select(
            entries.c.stage_id.label("stage_id"),
            _seconds_between(entries.c.at, entries.c.next_at, dialect).label("seconds"),
        )
        .where(entries.c.next_at.is_not(None))
        .subquery()
    )
    conversion_rows = select(
        literal("c").label("kind"),
        entries.c.stage_id,
        entries.c.next_progress,
        func.count().label("n"),
        cast(literal(None), Float).label("median"),
    ).group_by(entries.c.stage_id, entries.c.next_progress)
    rows = await session.execute(union_all(conversion_rows, _median_rows(durations, dialect)))
    buckets: Buckets = {}
    medians: dict[int, tuple[float, int]] = {}
    for kind, stage_id, progress, n, median in rows:
        if kind == "c":
            buckets.setdefault(stage_id, []).append((progress, int(n)))
        else:
            medians[stage_id] = (float(median), int(n))
    return buckets, medians


def _median_rows(durations: Any, dialect: str) -> Any:
    """Per stage: samples and the median of `seconds` (the mean of the two middle values when even)."""
    if dialect == "postgresql":
        # An ordered-set aggregate: one sort per stage, no window machinery.
        return select(
            literal("m"),
            durations.c.stage_id,
            cast(literal(None), Integer),
            func.count(),
            cast(func.percentile_cont(0.5).within_group(durations.c.seconds), Float),
        ).group_by(durations.c.stage_id)
    ranked = select(
        durations.c.stage_id,
        durations.c.seconds,
        func.row_number().over(partition_by=durations.c.stage_id, order_by=durations.c.seconds).label("rn"),
        func.count().over(partition_by=durations.c.stage_id).label("n"),
    ).subquery()
    # SQLite has no percentile_cont: the middle row (odd n) or the two middle rows (even n) by rank.
    return (
        select(
            literal("m"),
            ranked.c.stage_id,
            cast(literal(None), Integer),
            func.max(ranked.c.n),
            cast(func.avg(ranked.c.seconds), Float),
        )
        .where(ranked.c.rn.in_([(ranked.c.n + 1) // 2, (ranked.c.n + 2) // 2]))
        .group_by(ranked.c.stage_id)
    )


def build_flow(
    ctx: FunnelContext, buckets: Buckets, medians: dict[int, tuple[float, int]], won: dict[int, int]
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


def _times(ctx: FunnelContext, medians: dict[int, tuple[float, int]]) -> list[StageTime]:
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
