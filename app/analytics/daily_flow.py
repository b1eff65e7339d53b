"""Entries, exits and exact medians of time in stage for a period, from the daily stage counts.

Same definitions and numbers as app.analytics.transitions (which reads the transitions table, and is
kept as the reference the tests compare with), at a fraction of the work on long periods: the whole
UTC days inside the period come from the daily rows (a few per stage and day), and only the partial
days at its edges from the transitions themselves (two index range scans each). Soft-deleted deals'
transitions are read by deal id and taken out, as the reference does.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import chain

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.daily_counts import decode_durations, microseconds
from app.analytics.funnels import FunnelContext
from app.analytics.models import DailyStageEntries, DailyStageExits
from app.analytics.schemas import Period
from app.analytics.transitions import SAMPLE_EVERY, Deleted, DeletedDeals, Exits, Medians, _window
from app.deals.models import StageTransition

# Deleted exits are taken out of a stage's sorted durations one by one (a C memmove each) while they
# are fewer than this share of it; beyond, the list is filtered once.
_REMOVE_ONE_BY_ONE = 64


@dataclass
class _Flow:
    """What the period adds up to: entries per stage, exits per (stage, stage moved to) and the
    durations of each stage's exits (microseconds)."""

    entries: Counter[int] = field(default_factory=Counter)
    exits: Counter[tuple[int, int | None]] = field(default_factory=Counter)
    runs: dict[int, list[Sequence[float]]] = field(default_factory=dict)  # sorted durations
    loose: dict[int, list[float]] = field(default_factory=dict)  # edge exits' durations
    removed: dict[int, list[float]] = field(default_factory=dict)  # deleted deals' durations

    def exit(
        self, stage_id: int, to_stage_id: int | None, entered: datetime, at: datetime, sign: int
    ) -> None:
        self.exits[(stage_id, to_stage_id)] += sign
        us = float(microseconds(entered, at))
        (self.loose if sign > 0 else self.removed).setdefault(stage_id, []).append(us)

    def medians(self) -> Medians:
        for stage_id, values in self.loose.items():
            self.runs.setdefault(stage_id, []).append(sorted(values))
        medians: Medians = {}
        for stage_id, runs in self.runs.items():
            found = median(runs, sorted(self.removed.get(stage_id, [])))
            if found is not None:
                medians[stage_id] = found
        return medians


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def split_period(period: Period) -> tuple[tuple[date, date] | None, list[Period]]:
    """The whole UTC days inside the period (first, end exclusive), or None, and the partial
    stretches around them."""
    start, end = period.start.astimezone(UTC), period.end.astimezone(UTC)
    first = start.date() if start == _midnight(start.date()) else start.date() + timedelta(days=1)
    last = end.date()  # midnight of end's day; the days before it end by `end`
    if first >= last:
        return None, [period] if start < end else []
    edges = [Period(start=start, end=_midnight(first)), Period(start=_midnight(last), end=end)]
    return (first, last), [edge for edge in edges if edge.start < edge.end]


async def stage_flow(
    session: AsyncSession, ctx: FunnelContext, period: Period, deleted: DeletedDeals
) -> tuple[dict[int, int], Exits, Medians]:
    """Entries per stage (as transitions.stage_entries), exits by progress and medians with their
    samples (as transitions.stage_exits), for all the funnel's stages."""
    if not ctx.stages:
        return {}, {}, {}
    ids = [s.id for s in ctx.stages]
    flow = _Flow()
    days, edges = split_period(period)
    if days is not None:
        await _read_days(session, ids, days, flow)
    for edge in edges:
        await _read_edge(session, ids, edge, flow)
    gone = Deleted(ctx, deleted)
    if gone:
        await _subtract_deleted(session, ids, period, gone, flow)
    return _entries(flow), _exits(ctx, flow), flow.medians()


async def _read_days(session: AsyncSession, ids: Sequence[int], days: tuple[date, date], flow: _Flow) -> None:
    first, last = days
    e = DailyStageEntries
    for stage_id, n in await session.execute(
        select(e.stage_id, func.sum(e.entries))
        .where(e.stage_id.in_(ids), e.day >= first, e.day < last)
        .group_by(e.stage_id)
    ):
        flow.entries[stage_id] += int(n)
    x = DailyStageExits
    for stage_id, to_stage_id, n, durations in await session.execute(
        select(x.from_stage_id, x.to_stage_id, x.exits, x.durations).where(
            x.from_stage_id.in_(ids), x.day >= first, x.day < last
        )
    ):
        flow.exits[(stage_id, to_stage_id)] += n
        flow.runs.setdefault(stage_id, []).append(decode_durations(durations))


async def _read_edge(session: AsyncSession, ids: Sequence[int], edge: Period, flow: _Flow) -> None:
    t = StageTransition
    for stage_id, n in await session.execute(
        select(t.to_stage_id, func.count())
        .where(t.to_stage_id.in_(ids), t.at >= edge.start, t.at < edge.end)
        .group_by(t.to_stage_id)
    ):
        if stage_id is not None:  # always, by the condition
            flow.entries[stage_id] += int(n)
    for stage_id, to_stage_id, entered, at in await session.execute(
        select(t.from_stage_id, t.to_stage_id, t.from_stage_entered_at, t.at).where(
            t.from_stage_id.in_(ids),
            t.from_stage_entered_at >= edge.start,
            t.from_stage_entered_at < edge.end,
        )
    ):
        if stage_id is not None and entered is not None:  # always, by the conditions
            flow.exit(stage_id, to_stage_id, entered, at, 1)


async def _subtract_deleted(
    session: AsyncSession, ids: Sequence[int], period: Period, gone: Deleted, flow: _Flow
) -> None:
    moves = gone.transitions(session.bind.dialect.name if session.bind else "sqlite")
    stages = set(ids)
    rows = await session.execute(
        select(moves.c.from_stage_id, moves.c.to_stage_id, moves.c.from_stage_entered_at, moves.c.at)
    )
    for stage_id, to_stage_id, entered, at in rows:
        if to_stage_id in stages and period.start <= at < period.end:
            flow.entries[to_stage_id] -= 1
        if stage_id in stages and entered is not None and period.start <= entered < period.end:
            flow.exit(stage_id, to_stage_id, entered, at, -1)


def _entries(flow: _Flow) -> dict[int, int]:
    return {stage_id: n for stage_id, n in flow.entries.items() if n}


def _exits(ctx: FunnelContext, flow: _Flow) -> Exits:
    """Exits by the progress (sort) of the stage moved to; None for a failure stage, a stage of
    another funnel or one the funnel does not map."""
    progress = {s.id: s.sort for s in ctx.stages if s.semantics != "failure"}
    exits: Exits = {}
    for (stage_id, to_stage_id), n in flow.exits.items():
        by_progress = exits.setdefault(stage_id, {})
        key = progress.get(to_stage_id) if to_stage_id is not None else None
        by_progress[key] = by_progress.get(key, 0) + n
    # Only what is left once the deleted deals are out, as the reference reports it.
    exits = {stage_id: {k: n for k, n in rows.items() if n} for stage_id, rows in exits.items()}
    return {stage_id: rows for stage_id, rows in exits.items() if rows}


def median(runs: Sequence[Sequence[float]], removed: Sequence[float]) -> tuple[float, int] | None:
    """The exact median (seconds) of the sorted runs' values less `removed` (sorted, each one of
    them), with how many values that is; None when none is left.

    The way app.analytics.transitions finds it on SQLite, without sorting everything (300,000
    durations in 180 days of 100,000 deals): a sample of every SAMPLE_EVERY-th value of each run
    places a window around the middle; bisecting each run counts the values below the window and
    slices those inside it, whose sorted middle is the median. A window the sample misplaced (the
    middle ranks fall outside it, rare by construction) falls back to sorting everything."""
    n = sum(map(len, runs)) - len(removed)
    if n <= 0:
        return None
    window = _window(_sample(runs))
    if window is not None:
        low, high = window
        below = sum(bisect_left(run, low) for run in runs) - bisect_left(removed, low)
        inside = sorted(
            chain.from_iterable(run[bisect_left(run, low) : bisect_right(run, high)] for run in runs)
        )
        middle = _middle(
            _less(inside, removed[bisect_left(removed, low) : bisect_right(removed, high)]), n, below
        )
        if middle is not None:
            return middle / 1_000_000, n
    values = _less(sorted(chain.from_iterable(runs)), removed)
    middle = _middle(values, n, 0)
    assert middle is not None  # every value is there
    return middle / 1_000_000, n


def _sample(runs: Sequence[Sequence[float]]) -> list[float]:
    """Every SAMPLE_EVERY-th value of the runs taken as one sequence (the stride carries over from
    run to run: starting each run afresh would over-sample the short runs' smallest values)."""
    sample: list[float] = []
    seen = 0
    for run in runs:
        sample.extend(run[(-seen) % SAMPLE_EVERY :: SAMPLE_EVERY])
        seen += len(run)
    return sorted(sample)


def _middle(values: Sequence[float], n: int, below: int) -> float | None:
    """The median of n values of which `values` are the sorted ones from rank `below` on, if they
    hold the middle rank(s)."""
    low, high = (n - 1) // 2 - below, n // 2 - below
    return (values[low] + values[high]) / 2 if low >= 0 and high < len(values) else None


def _less(values: list[float], removed: Sequence[float]) -> list[float]:
    """Sorted `values` less `removed` (each of which is among them)."""
    if not removed:
        return values
    if len(removed) * _REMOVE_ONE_BY_ONE < len(values):
        for value in removed:
            del values[bisect_left(values, value)]
        return values
    left = Counter(removed)
    kept: list[float] = []
    for value in values:
        if left[value]:
            left[value] -= 1
        else:
            kept.append(value)
    return kept
