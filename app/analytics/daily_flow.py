"""Entries, exits and exact medians of time in stage for a period, from the daily stage counts.

Same definitions and numbers as app.analytics.transitions (which reads the transitions table, and is
kept as the reference the tests compare with), at a fraction of the work on long periods: the whole
UTC days inside the period come from the daily rows (a few per stage and day), those of its whole
calendar months from their monthly sums (app.analytics.models.MonthlyStageEntries and the others),
and only the partial days at its edges from the transitions themselves (two index range scans each;
a partial day of more than 12 hours as its whole day less the transitions of the rest of it, see
plan_period).
Soft-deleted deals' transitions are read by deal id and taken out, as the reference does.

Medians: the exits' counts per duration bucket (app.analytics.models.DailyStageDurations) place each
stage's middle rank(s) in one bucket (or two adjacent ones); only those buckets' durations are read
and sorted, and the middle is picked from them by its rank among all the stage's exits. Exact, with
no sampling and no fallback.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import chain
from typing import Any

from sqlalchemy import DateTime, and_, func, or_, select, type_coerce, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.daily_counts import decode_durations, duration_bucket, microseconds
from app.analytics.funnels import FunnelContext
from app.analytics.models import (
    DailyStageDurations,
    DailyStageEntries,
    DailyStageExits,
    MonthlyStageDurations,
    MonthlyStageEntries,
    MonthlyStageExits,
)
from app.analytics.schemas import Period
from app.analytics.transitions import Deleted, DeletedDeals, Exits, Medians
from app.deals.models import StageTransition

# Deleted exits are taken out of a bucket's sorted durations one by one (a C memmove each) while they
# are fewer than this share of it; beyond, the list is filtered once.
_REMOVE_ONE_BY_ONE = 64


@dataclass
class _Flow:
    """What the period adds up to: entries per stage, exits per (stage, stage moved to), and per
    stage the exits per duration bucket, with the durations (microseconds) of the exits read from
    the transitions: those added (partial days) and those taken out (the rest of a day read whole,
    the deleted deals'), which the daily rows read for the median still hold."""

    entries: Counter[int] = field(default_factory=Counter)
    exits: Counter[tuple[int, int | None]] = field(default_factory=Counter)
    buckets: dict[int, Counter[int]] = field(default_factory=dict)
    loose: dict[int, list[int]] = field(default_factory=dict)  # added exits' durations
    removed: dict[int, list[int]] = field(default_factory=dict)  # taken out exits' durations

    def exited(self, rows: Iterable[tuple[int | None, int | None, datetime, datetime]], sign: int) -> None:
        """Exits as (stage, stage moved to, entered, left): added (sign 1, a partial day's) or taken
        out (-1, the rest of a day read whole, or the deleted deals'). Counted a batch at a time
        (Counter.update counts in C): a partial day can hold a day of exits, some 1,700 here."""
        durations: dict[int, list[int]] = {}
        pairs: list[tuple[int, int | None]] = []
        for stage_id, to_stage_id, entered, at in rows:
            if stage_id is None:  # never, by the statements' conditions
                continue
            pairs.append((stage_id, to_stage_id))
            durations.setdefault(stage_id, []).append(microseconds(entered, at))
        kept = self.loose if sign > 0 else self.removed
        (self.exits.update if sign > 0 else self.exits.subtract)(pairs)
        for stage_id, values in durations.items():
            counts = self.buckets.get(stage_id)
            if counts is None:
                counts = self.buckets[stage_id] = Counter()
            (counts.update if sign > 0 else counts.subtract)(map(duration_bucket, values))
            kept.setdefault(stage_id, []).extend(values)


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind else "sqlite"


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


@dataclass
class Plan:
    """How a period is read: whole UTC days from the daily rows, plus the transitions of the
    partial stretches in `add`, less those of the stretches in `subtract`."""

    days: tuple[date, date] | None
    add: list[Period]
    subtract: list[Period]


# A partial day longer than this is read as its whole day less the rest of it: the default 30-day
# page ends at "now", and the rest of today holds no transitions yet, while the part before "now"
# holds most of the day's.
_COMPLEMENT_FROM = timedelta(hours=12)


def plan_period(period: Period) -> Plan:
    """split_period, with each partial day longer than _COMPLEMENT_FROM read as its whole day less
    the rest of the day (when that day touches the whole days, so they stay one range)."""
    days, edges = split_period(period)
    plan = Plan(days, [], [])
    for edge in edges:
        day = edge.start.astimezone(UTC).date()
        whole = Period(start=_midnight(day), end=_midnight(day + timedelta(days=1)))
        adjacent = plan.days is None or day in (plan.days[0] - timedelta(days=1), plan.days[1])
        if edge.end > whole.end or edge.end - edge.start <= _COMPLEMENT_FROM or not adjacent:
            plan.add.append(edge)
            continue
        first, last = plan.days or (day, day + timedelta(days=1))
        plan.days = (min(first, day), max(last, day + timedelta(days=1)))
        rest = [Period(start=whole.start, end=edge.start), Period(start=edge.end, end=whole.end)]
        plan.subtract.extend(part for part in rest if part.start < part.end)
    return plan


async def stage_flow(
    session: AsyncSession, ctx: FunnelContext, period: Period, deleted: DeletedDeals
) -> tuple[dict[int, int], Exits, Medians]:
    """Entries per stage (as transitions.stage_entries), exits by progress and medians with their
    samples (as transitions.stage_exits), for all the funnel's stages."""
    if not ctx.stages:
        return {}, {}, {}
    ids = [s.id for s in ctx.stages]
    flow = _Flow()
    plan = plan_period(period)
    if plan.days is not None:
        await _read_days(session, ids, plan.days, flow)
    for edge in plan.add:
        await _read_edge(session, ids, edge, flow, 1)
    for rest in plan.subtract:
        await _read_edge(session, ids, rest, flow, -1)
    gone = Deleted(ctx, deleted)
    if gone:
        await _subtract_deleted(session, ids, period, gone, flow)
    return _entries(flow), _exits(ctx, flow), await _medians(session, plan.days, flow)


@dataclass(frozen=True)
class _Counts:
    """Where whole days' counts are read: the daily tables, or their monthly sums."""

    entries: type[DailyStageEntries | MonthlyStageEntries]
    exits: type[DailyStageExits | MonthlyStageExits]
    durations: type[DailyStageDurations | MonthlyStageDurations]
    at: str  # the key column of the day or month


_DAILY = _Counts(DailyStageEntries, DailyStageExits, DailyStageDurations, "day")
_MONTHLY = _Counts(MonthlyStageEntries, MonthlyStageExits, MonthlyStageDurations, "month")


def split_months(days: tuple[date, date]) -> tuple[tuple[date, date] | None, list[tuple[date, date]]]:
    """The whole calendar months inside the days [first, last) as (first day of the first, first day
    after the last), or None, and the ranges of days around them."""
    first, last = days
    months_from = first if first.day == 1 else (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    months_to = last.replace(day=1)
    if months_from >= months_to:
        return None, [days]
    around = [(first, months_from), (months_to, last)]
    return (months_from, months_to), [(start, end) for start, end in around if start < end]


async def _read_days(session: AsyncSession, ids: Sequence[int], days: tuple[date, date], flow: _Flow) -> None:
    """The whole days' entries, exits and exits per duration bucket: their whole calendar months from
    the monthly sums, the days around those from the daily rows (180 days: about 5 months and 30 days
    instead of 180 days), each sum one statement over both."""
    months, around = split_months(days)
    reads = [(_DAILY, start, end) for start, end in around]
    if months is not None:
        reads.append((_MONTHLY, *months))
    for stage_id, n in await _summed(session, reads, "entries", ["stage_id"], "entries", ids):
        flow.entries[stage_id] += int(n)
    for stage_id, to_stage_id, n in await _summed(
        session, reads, "exits", ["from_stage_id", "to_stage_id"], "exits", ids
    ):
        flow.exits[(stage_id, to_stage_id)] += int(n)
    for stage_id, bucket, n in await _summed(
        session, reads, "durations", ["from_stage_id", "bucket"], "exits", ids
    ):
        flow.buckets.setdefault(stage_id, Counter())[bucket] += int(n)


async def _summed(
    session: AsyncSession,
    reads: Sequence[tuple[_Counts, date, date]],
    table: str,
    keys: list[str],
    count: str,
    ids: Sequence[int],
) -> Sequence[Any]:
    """`count` summed per `keys` (the first a stage, one of `ids`) over the rows of `table` (an
    attribute of _Counts) in each (counts, first day or month, end) read: one statement."""
    parts = []
    for counts, start, end in reads:
        model = getattr(counts, table)
        at = getattr(model, counts.at)
        keyed = [getattr(model, key).label(key) for key in keys]
        stage = getattr(model, keys[0])
        parts.append(
            select(*keyed, getattr(model, count).label("n")).where(stage.in_(ids), at >= start, at < end)
        )
    both = union_all(*parts).subquery()
    grouped = [both.c[key] for key in keys]
    return (await session.execute(select(*grouped, func.sum(both.c.n)).group_by(*grouped))).all()


async def _read_edge(session: AsyncSession, ids: Sequence[int], edge: Period, flow: _Flow, sign: int) -> None:
    """The stretch's entries and exits added to (sign 1) or taken out of (-1: the rest of a day
    read whole) the flow."""
    t = StageTransition
    for stage_id, n in await session.execute(
        select(t.to_stage_id, func.count())
        .where(t.to_stage_id.in_(ids), t.at >= edge.start, t.at < edge.end)
        .group_by(t.to_stage_id)
    ):
        if stage_id is not None:  # always, by the condition
            flow.entries[stage_id] += sign * int(n)
    # The times as the column type's implementation reads them: the app's UTCDateTime would attach
    # the time zone to each (two calls per row), which a difference does not need.
    entered, at = type_coerce(t.from_stage_entered_at, DateTime()), type_coerce(t.at, DateTime())
    rows = await session.execute(
        select(t.from_stage_id, t.to_stage_id, entered, at).where(
            t.from_stage_id.in_(ids),
            t.from_stage_entered_at >= edge.start,
            t.from_stage_entered_at < edge.end,
        )
    )
    flow.exited(rows, sign)


async def _subtract_deleted(
    session: AsyncSession, ids: Sequence[int], period: Period, gone: Deleted, flow: _Flow
) -> None:
    moves = gone.transitions(_dialect(session))
    stages = set(ids)
    rows = await session.execute(
        select(moves.c.from_stage_id, moves.c.to_stage_id, moves.c.from_stage_entered_at, moves.c.at)
    )
    exits: list[tuple[int | None, int | None, datetime, datetime]] = []
    for stage_id, to_stage_id, entered, at in rows:
        if to_stage_id in stages and period.start <= at < period.end:
            flow.entries[to_stage_id] -= 1
        if stage_id in stages and entered is not None and period.start <= entered < period.end:
            exits.append((stage_id, to_stage_id, entered, at))
    flow.exited(exits, -1)


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


async def _medians(session: AsyncSession, days: tuple[date, date] | None, flow: _Flow) -> Medians:
    """Each stage's exact median (seconds) and number of exits: only the durations of the bucket(s)
    holding its middle rank(s) are read from the daily rows, in one statement for all stages."""
    middles = {
        stage_id: found for stage_id, counts in flow.buckets.items() if (found := middle_buckets(counts))
    }
    wanted = [(stage_id, bucket) for stage_id, (_, _, buckets) in middles.items() for bucket in buckets]
    read = await _bucket_durations(session, days, wanted) if days is not None and wanted else {}
    medians: Medians = {}
    for stage_id, (n, below, buckets) in middles.items():
        inside = chain(
            chain.from_iterable(read.get((stage_id, bucket), ()) for bucket in buckets),
            (float(us) for us in flow.loose.get(stage_id, ()) if duration_bucket(us) in buckets),
        )
        removed = [float(us) for us in flow.removed.get(stage_id, ()) if duration_bucket(us) in buckets]
        medians[stage_id] = (middle_value(sorted(inside), sorted(removed), n, below) / 1_000_000, n)
    return medians


async def _bucket_durations(
    session: AsyncSession, days: tuple[date, date], wanted: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], list[float]]:
    """The whole days' durations of the (stage, bucket) pairs: a range of the primary key each."""
    first, last = days
    d = DailyStageDurations
    read: dict[tuple[int, int], list[float]] = {}
    for stage_id, bucket, durations in await session.execute(
        select(d.from_stage_id, d.bucket, d.durations).where(
            or_(*(and_(d.from_stage_id == s, d.bucket == b) for s, b in wanted)), d.day >= first, d.day < last
        )
    ):
        read.setdefault((stage_id, bucket), []).extend(decode_durations(durations))
    return read


def middle_buckets(counts: Counter[int]) -> tuple[int, int, list[int]] | None:
    """From a stage's exits per bucket: how many exits there are, how many lie in the buckets below
    the middle, and the bucket(s) holding the middle rank(s) (two when the middle pair straddles a
    bucket's end); None when there is no exit."""
    n = sum(counts.values())
    if n <= 0:
        return None
    low, high = (n - 1) // 2, n // 2  # the middle ranks, counted from 0
    below, seen = 0, 0
    picked: list[int] = []
    for bucket in sorted(counts):
        # Ranks seen .. seen + count - 1 are in this bucket.
        if seen <= high and seen + counts[bucket] > low and counts[bucket] > 0:
            below = below if picked else seen
            picked.append(bucket)
        seen += counts[bucket]
    return n, below, picked


def middle_value(inside: list[float], removed: Sequence[float], n: int, below: int) -> float:
    """The median of n values of which `below` are smaller than `inside` (sorted, still holding the
    deleted deals' `removed`, sorted) and the rest larger: the middle of what is left."""
    values = _less(inside, removed)
    low, high = (n - 1) // 2 - below, n // 2 - below
    return (values[low] + values[high]) / 2


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
