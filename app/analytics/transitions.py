"""Stage entries and exits of a funnel in a period, read from the transitions table in SQL.

Every stage transition also records when the deal had entered the stage it leaves
(`from_stage_entered_at`, the `at` of the deal's previous transition), so an entry into a stage and the
exit that ends it are found by two index range scans, with no window over the funnel's history:

- entries(S): transitions into S with `at` in the period (ix_stage_transitions_to_stage_at).
- exits(S): transitions out of S (from_stage_id = S) whose `from_stage_entered_at` is in the period,
  i.e. the ends of exactly those entries that have ended (ix_stage_transitions_from_stage_entered),
  counted by where they went, with the median of their durations (exit `at` -
  `from_stage_entered_at`): percentile_cont on PostgreSQL; on SQLite, which lacks it, the middle
  value(s) found by sorting only a window around the middle that a sample of the exits places (see
  _sqlite_exits).

A deal's first transition (its creation) has no stage it leaves, so from_stage_id and
from_stage_entered_at are both NULL there and it is never an exit; it is an entry like any other.
Soft-deleted deals count nowhere (see Deleted). Entries are not limited to deals still in the funnel:
a deal that moved to another pipeline keeps the entries it made here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Float, Select, Subquery, bindparam, case, cast, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from app.analytics.funnels import FunnelContext
from app.analytics.schemas import Period, StageInfo
from app.deals.models import Deal, StageTransition

Medians = dict[int, tuple[float, int]]  # stage id -> (median seconds in the stage, samples)
Exits = dict[int, dict[int | None, int]]  # stage id -> progress of the stage moved to -> exits

# The funnel's soft-deleted deal ids, or None when there are more than DELETED_LIST_MAX of them:
# read once per page and written into the statements, so the parallel statements do not each scan the
# funnel's deals.
DeletedDeals = tuple[int, ...] | None
DELETED_LIST_MAX = 1000


async def deleted_deals(session: AsyncSession, ctx: FunnelContext) -> DeletedDeals:
    ids = await session.scalars(
        select(Deal.id)
        .where(Deal.funnel_id == ctx.ref.id, Deal.deleted_at.is_not(None))
        .limit(DELETED_LIST_MAX + 1)
    )
    listed = tuple(ids)
    return None if len(listed) > DELETED_LIST_MAX else listed


class Deleted:
    """The funnel's soft-deleted deals in one statement: the listed ids, or a CTE reading them.

    Their transitions are usually few, so the counts take everything and subtract what the deleted
    deals' transitions, read by deal id, add (on 180 days of a 100,000-deal funnel, a NOT IN probe on
    each of the 400,000 entries takes SQLite from 30 to 120 ms with 1,000 deleted deals, and to 70 ms
    with 10). Only PostgreSQL's percentile_cont, which cannot subtract, and SQLite's rare whole-stage
    sort exclude them row by row (NOT IN), which PostgreSQL does cheaply (a hashed list)."""

    def __init__(self, ctx: FunnelContext, deleted: DeletedDeals) -> None:
        self.ids = deleted
        # A CTE referenced several times is materialized once, on both databases.
        self.cte = (
            select(Deal.id)
            .where(Deal.funnel_id == ctx.ref.id, Deal.deleted_at.is_not(None))
            .cte("deleted_deals")
            if deleted is None
            else None
        )

    def __bool__(self) -> bool:
        return self.cte is not None or bool(self.ids)

    def _ids(self) -> Any:
        if self.cte is not None:
            return select(self.cte.c.id)
        # Literals, not parameters: a statement may name the list several times.
        return bindparam("deleted_deal_ids", self.ids, expanding=True, literal_execute=True)

    def ids_or_query(self) -> Any:
        """What `deal_id IN (...)` takes: the listed ids, or the statement reading them."""
        return self._ids()

    def excluded(self) -> list[ColumnElement[bool]]:
        """The condition "the transition's deal is not deleted" (none when no deal is)."""
        return [StageTransition.deal_id.not_in(self._ids())] if self else []

    def transitions(self, dialect: str) -> Subquery:
        """The deleted deals' transitions, read through ix_stage_transitions_deal_at."""
        t = StageTransition
        query = select(t.to_stage_id, t.at, t.from_stage_id, t.from_stage_entered_at).where(
            t.deal_id.in_(self._ids())
        )
        if dialect == "sqlite":
            # LIMIT -1 (none) keeps SQLite from merging this into the caller's conditions, where it
            # would rather scan the period's transitions with the stage indexes and probe each.
            query = query.limit(-1)
        return query.subquery("deleted_transitions")


def _seconds_between(start: Any, end: Any, dialect: str) -> ColumnElement[float]:
    if dialect == "postgresql":
        # date_part is double precision; EXTRACT returns numeric since PostgreSQL 14, slower to
        # compute and to sort (half the stages over 180 days at 100,000 deals: 72 -> 48 ms).
        return func.date_part("epoch", end - start, type_=Float)
    # SQLite keeps datetimes as ISO text; julianday() reads it (resolution well under a millisecond).
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind else "sqlite"


def _stage_is(column: Any, ids: Sequence[int]) -> ColumnElement[bool]:
    return column == ids[0] if len(ids) == 1 else column.in_(ids)  # type: ignore[no-any-return]


def _exits_in(
    stage_ids: Sequence[int], period: Period, from_stage: Any = None, entered: Any = None
) -> list[ColumnElement[bool]]:
    """Transitions out of the stages ending an entry made in the period (by default in
    stage_transitions; from_stage/entered name the columns of a subquery instead).

    from_stage_entered_at is NULL only on a deal's first transition, whose from_stage_id is NULL as
    well: the range condition drops it, and it ends no entry."""
    t = StageTransition
    from_stage = t.from_stage_id if from_stage is None else from_stage
    entered = t.from_stage_entered_at if entered is None else entered
    return [_stage_is(from_stage, stage_ids), entered >= period.start, entered < period.end]


async def stage_entries(
    session: AsyncSession, ctx: FunnelContext, period: Period, deleted: DeletedDeals
) -> dict[int, int]:
    """Entries into each stage in the period (reached)."""
    if not ctx.stages:
        return {}
    t = StageTransition
    ids = [s.id for s in ctx.stages]
    query: Any = (
        select(t.to_stage_id, func.count())
        .where(_stage_is(t.to_stage_id, ids), t.at >= period.start, t.at < period.end)
        .group_by(t.to_stage_id)
    )
    gone = Deleted(ctx, deleted)
    if gone:
        moves = gone.transitions(_dialect(session))
        query = union_all(
            query,
            select(moves.c.to_stage_id, -func.count())
            .where(_stage_is(moves.c.to_stage_id, ids), moves.c.at >= period.start, moves.c.at < period.end)
            .group_by(moves.c.to_stage_id),
        )
    entries: dict[int, int] = {}
    for stage_id, n in await session.execute(query):
        if stage_id is not None:
            entries[stage_id] = entries.get(stage_id, 0) + int(n)
    return {stage_id: n for stage_id, n in entries.items() if n}


async def stage_exits(
    session: AsyncSession,
    ctx: FunnelContext,
    period: Period,
    deleted: DeletedDeals,
    stages: Sequence[StageInfo] | None = None,
) -> tuple[Exits, Medians]:
    """For each of `stages` (default: all), the exits ending an entry made in the period, by the
    progress (sort) of the stage moved to (None: a failure stage, a stage of another funnel or one the
    funnel does not map), and the median seconds from entry to exit over those exits, with their count.

    The page splits the stages over two connections (stage_groups): the medians are most of its work."""
    stages = ctx.stages if stages is None else stages
    if not stages:
        return {}, {}
    targets = [s for s in ctx.stages if s.semantics != "failure"]
    gone = Deleted(ctx, deleted)
    if _dialect(session) == "postgresql":
        rows = await _postgres_exits(session, stages, targets, period, gone)
    else:
        rows = await _sqlite_exits(session, stages, targets, period, gone)
    exits: Exits = {}
    medians: Medians = {}
    for stage_id, median, total, counts in rows:
        by_progress: dict[int | None, int] = {}
        for target, n in zip(targets, counts, strict=True):
            if n:
                by_progress[target.sort] = by_progress.get(target.sort, 0) + n
        elsewhere = total - sum(counts)
        if elsewhere:
            by_progress[None] = elsewhere
        exits[stage_id] = by_progress
        if median is not None:
            medians[stage_id] = (median, total)
    return exits, medians


def stage_groups(ctx: FunnelContext, parts: int = 2) -> list[list[StageInfo]]:
    """The stages dealt out in template order into `parts` groups of similar weight: the first stages
    see the most exits, so alternating them balances the work."""
    return [group for group in (ctx.stages[i::parts] for i in range(parts)) if group]


# (exited stage id, median seconds, exits, exits per target stage)
_ExitRow = tuple[int, float | None, int, list[int]]


def _per_target(to_stage: Any, targets: Sequence[StageInfo]) -> list[Any]:
    # One count per non-failure stage (a handful) rather than grouping by (from, to): grouping by the
    # exited stage alone follows the index, (from, to) would sort every exit on SQLite.
    return [func.count().filter(to_stage == s.id) for s in targets]


async def _postgres_exits(
    session: AsyncSession,
    stages: Sequence[StageInfo],
    targets: Sequence[StageInfo],
    period: Period,
    gone: Deleted,
) -> list[_ExitRow]:
    t = StageTransition
    seconds = _seconds_between(t.from_stage_entered_at, t.at, "postgresql")
    rows = await session.execute(
        select(
            t.from_stage_id,
            # An ordered-set aggregate: one sort per stage.
            cast(func.percentile_cont(0.5).within_group(seconds), Float),
            func.count(),
            *_per_target(t.to_stage_id, targets),
        )
        .where(*_exits_in([s.id for s in stages], period), *gone.excluded())
        .group_by(t.from_stage_id)
    )
    return [
        (stage_id, float(median), int(n), [int(c) for c in counts]) for stage_id, median, n, *counts in rows
    ]


# SQLite's median: a sample of one exit in SAMPLE_EVERY (by id, read from the index) places a window
# around each stage's middle; one pass then counts the stage's exits and those below the window, and
# returns the durations inside it, whose middle one(s) are the median. A stage with fewer than
# SAMPLE_MIN sampled exits has no window: all its durations are returned.
SAMPLE_EVERY = 16
SAMPLE_MIN = 64


@dataclass
class _Tally:
    """One stage's exits as the SQLite pass reports them, less the deleted deals' share."""

    n: int = 0
    below: int = 0
    inside: Counter[str] = field(default_factory=Counter)  # durations as SQLite prints them
    deleted: Counter[str] = field(default_factory=Counter)
    counts: list[int] = field(default_factory=list)

    def add(self, sign: int, n: int, below: int, inside: str | None, counts: Sequence[int]) -> None:
        self.n += sign * n
        self.below += sign * below
        (self.inside if sign > 0 else self.deleted).update(inside.split(",") if inside else [])
        self.counts = [a + sign * b for a, b in zip(self.counts or [0] * len(counts), counts, strict=True)]

    def median(self) -> float | None:
        """The middle value(s) if the window holds them; None if the sample misplaced it."""
        values = sorted(float(v) for v in (self.inside - self.deleted).elements())
        low, high = (self.n - 1) // 2 - self.below, self.n // 2 - self.below
        return (values[low] + values[high]) / 2 if low >= 0 and high < len(values) else None


async def _sqlite_exits(
    session: AsyncSession,
    stages: Sequence[StageInfo],
    targets: Sequence[StageInfo],
    period: Period,
    gone: Deleted,
) -> list[_ExitRow]:
    """SQLite has no percentile_cont, and sorting every duration is slow there: 180 days of a
    100,000-deal funnel are some 300,000 exits, about 250 ms to sort under ORDER BY ... LIMIT/OFFSET
    (twice that numbering them with row_number(), as this module once did). Sorting the few thousand
    inside the window is exact all the same, since the pass also counts those below it; when the
    sample misplaced the window (the middle ranks are not inside it, rare by construction), that
    stage is sorted whole.

    The deleted deals' exits are tallied the same way from their own transitions and subtracted
    (their durations print the same, so they are taken out of the window by their text)."""
    t = StageTransition
    ids = [s.id for s in stages]
    seconds = _seconds_between(t.from_stage_entered_at, t.at, "sqlite")
    sampled: dict[int, list[float]] = {}
    for stage_id, sample in await session.execute(
        select(t.from_stage_id, seconds).where(*_exits_in(ids, period), t.id % SAMPLE_EVERY == 0)
    ):
        if stage_id is not None:  # always, by the condition on from_stage_id
            sampled.setdefault(stage_id, []).append(float(sample))
    windows = {stage_id: _window(values) for stage_id, values in sampled.items()}
    no_window = (-math.inf, math.inf)

    def tally(sign: int, exits: Subquery, stage: StageInfo | None) -> Select[Any]:
        """One row per stage: sign, stage, exits, those below the window, the durations inside it
        (comma-separated) and the exits per target stage."""
        duration = exits.c.seconds
        low: Any
        high: Any
        if stage is not None:
            low, high = windows.get(stage.id) or no_window
            key: Any = literal(stage.id)
        else:  # all the stages, grouped
            key = exits.c.from_stage_id
            bounds = {s.id: windows.get(s.id) or no_window for s in stages}
            low = case({k: b[0] for k, b in bounds.items()}, value=key)
            high = case({k: b[1] for k, b in bounds.items()}, value=key)
        query = select(
            literal(sign),
            key,
            func.count(),
            func.count().filter(duration < low),
            func.group_concat(duration).filter(duration.between(low, high)),
            *_per_target(exits.c.to_stage_id, targets),
        )
        return query if stage is not None else query.group_by(key)

    # Per stage, so each is a range of the index and needs no GROUP BY sort. LIMIT -1 (none) keeps
    # SQLite from flattening the subquery into the aggregate, which would compute the duration once
    # per use instead of once per row.
    parts = [
        tally(
            1,
            select(t.to_stage_id, seconds.label("seconds"))
            .where(*_exits_in([stage.id], period))
            .limit(-1)
            .subquery(),
            stage,
        )
        for stage in stages
    ]
    if gone:
        moves = gone.transitions("sqlite")
        parts.append(
            tally(
                -1,
                select(
                    moves.c.from_stage_id,
                    moves.c.to_stage_id,
                    _seconds_between(moves.c.from_stage_entered_at, moves.c.at, "sqlite").label("seconds"),
                )
                .where(*_exits_in(ids, period, moves.c.from_stage_id, moves.c.from_stage_entered_at))
                .limit(-1)
                .subquery(),
                None,
            )
        )
    tallies: dict[int, _Tally] = {}
    for sign, stage_id, n, below, inside, *counts in await session.execute(union_all(*parts)):
        tallies.setdefault(stage_id, _Tally()).add(sign, n, below, inside, counts)
    rows: list[_ExitRow] = []
    for stage_id, counted in tallies.items():
        if counted.n <= 0:
            continue
        median = counted.median()
        if median is None:  # the sample misled
            median = await _sorted_median(session, stage_id, period, gone)
        rows.append((stage_id, median, counted.n, counted.counts))
    return rows


def _window(sample: list[float]) -> tuple[float, float] | None:
    """Bounds around the sample's median. The whole set's median falls at a sample rank that varies
    by about sqrt(m)/2 (m: sample size); the window reaches three times that either side."""
    if len(sample) < SAMPLE_MIN:
        return None
    sample.sort()
    middle, reach = len(sample) // 2, math.ceil(1.5 * math.sqrt(len(sample))) + 1
    return sample[max(0, middle - reach)], sample[min(len(sample) - 1, middle + reach)]


async def _sorted_median(session: AsyncSession, stage_id: int, period: Period, gone: Deleted) -> float | None:
    """The exact median by sorting all of one stage's durations (ORDER BY ... LIMIT/OFFSET)."""
    t = StageTransition
    seconds = _seconds_between(t.from_stage_entered_at, t.at, "sqlite").label("seconds")
    conditions = [*_exits_in([stage_id], period), *gone.excluded()]
    n = select(func.count()).where(*conditions).scalar_subquery()
    middle = (
        select(seconds).where(*conditions).order_by(seconds).limit(2 - n % 2).offset((n - 1) // 2).subquery()
    )
    median = await session.scalar(select(func.avg(middle.c.seconds)))
    return None if median is None else float(median)
