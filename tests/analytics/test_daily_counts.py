"""The daily stage counts (app.analytics.daily_counts, read by app.analytics.daily_flow) give the page
exactly the numbers the transitions give (app.analytics.transitions, the reference), on both
databases: deals that move back, deals deleted, snapshots that arrive out of order (a reconcile
backfilling old moves after newer ones), periods with and without partial days. The counts kept
by the mirror also equal what counting every transition afresh gives (migration 0008's backfill).
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.analytics import daily_counts, daily_won, transitions
from app.analytics.daily_counts import duration_bucket
from app.analytics.daily_flow import (
    middle_buckets,
    middle_value,
    plan_period,
    split_months,
    split_period,
    stage_flow,
)
from app.analytics.flow import build_flow, flow_buckets, won_entries
from app.analytics.funnels import FunnelContext, load_funnel
from app.analytics.models import (
    DailyOutcomeEntries,
    DailyStageDurations,
    DailyStageEntries,
    DailyStageExits,
    MonthlyStageDurations,
    MonthlyStageEntries,
    MonthlyStageExits,
)
from app.analytics.schemas import Period
from app.deals.mirror import load_stage_index, mirror_snapshots, tombstone
from app.funnels.models import Funnel, FunnelStage
from connectors.base import DealSnapshot
from tests.support.db import add_funnel, open_sessions

T0 = datetime(2026, 3, 1, tzinfo=UTC)
STAGES = [("A", "process"), ("B", "process"), ("C", "process"), ("WON", "success"), ("LOST", "failure")]
CODES = [code for code, _ in STAGES]
PERIODS = [
    Period(start=T0, end=T0 + timedelta(days=20)),  # whole days only
    Period(
        start=T0 + timedelta(days=2, hours=5, minutes=7), end=T0 + timedelta(days=9, hours=13)
    ),  # two edges
    Period(start=T0 + timedelta(days=3, hours=1), end=T0 + timedelta(days=3, hours=22)),  # inside one day
    Period(start=T0 + timedelta(hours=20), end=T0 + timedelta(days=1, hours=4)),  # two partial days
    Period(start=T0 - timedelta(days=30), end=T0 + timedelta(days=4)),  # starts before everything
    # Short edges (read from the transitions) around whole days; the ones above over 12 hours are
    # read as their whole day less the rest of it.
    Period(start=T0 + timedelta(days=1, hours=18), end=T0 + timedelta(days=6, hours=5)),
    Period(start=T0 + timedelta(days=4, hours=2), end=T0 + timedelta(days=8, hours=23, minutes=59)),
    # Whole calendar months (read from the monthly sums) with and without days around them.
    Period(start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2026, 5, 1, tzinfo=UTC)),
    Period(start=datetime(2026, 2, 10, 7, tzinfo=UTC), end=datetime(2026, 4, 10, 3, tzinfo=UTC)),
    Period(start=datetime(2026, 3, 8, tzinfo=UTC), end=datetime(2026, 5, 20, tzinfo=UTC)),
]


def _histories(rng: random.Random, deals: int) -> dict[str, list[tuple[str, datetime]]]:
    """Random walks over the stages, in whole seconds (as the CRMs stamp them), going back now
    and then; about a third start the day before another's end, so days overlap."""
    histories = {}
    for number in range(1, deals + 1):
        at = T0 + timedelta(seconds=rng.randrange(0, 12 * 86_400))
        code = rng.choice(["A", "A", "B"])
        moves = [(code, at)]
        for _ in range(rng.randrange(0, 6)):
            at += timedelta(seconds=rng.randrange(30, 3 * 86_400))
            code = rng.choice([c for c in CODES if c != code])  # back, forward, won or lost
            moves.append((code, at))
        if number % 9 == 0:  # then to another funnel's stage, or to a CRM stage no funnel maps
            at += timedelta(seconds=rng.randrange(30, 86_400))
            moves.append((OTHER if number % 2 else UNMAPPED, at))
            if number % 4 == 0:  # and some come back, won
                moves.append(("WON", at + timedelta(hours=1)))
        histories[str(number)] = moves
    return histories


OTHER, UNMAPPED = "OTHER", "ZZZ"  # a stage of pipeline 6's funnel; a stage of pipeline 5 none maps


def _snapshot(deal: str, code: str, at: datetime) -> DealSnapshot:
    pipeline = "6" if code == OTHER else "5"
    return DealSnapshot(
        id=deal, pipeline_id=pipeline, stage_id=f"C{pipeline}:{code}", title=deal, updated_at=at
    )


async def _seed(sessions: async_sessionmaker[AsyncSession]) -> FunnelContext:
    rng = random.Random(14)
    async with sessions.begin() as session:
        connection, funnel = await add_funnel(session, STAGES, template_key="hand.built", name="Daily")
        other = Funnel(
            connection_id=connection.id, template_key="hand.other", name="Other", crm_pipeline_id="6"
        )
        session.add(other)
        await session.flush()
        session.add(
            FunnelStage(
                funnel_id=other.id,
                code=OTHER,
                name=OTHER,
                sort=0,
                semantics="process",
                crm_stage_id="C6:OTHER",
            )
        )
    histories = _histories(rng, 160)
    # Not vacuous: won deals leave the won stage (for another stage, funnel or an unmapped stage),
    # and some deleted deals are won.
    assert {moves[-1][0] for moves in histories.values()} >= {"WON", OTHER, UNMAPPED}
    assert any("WON" in [c for c, _ in moves[:-1]] and moves[-1][0] != "WON" for moves in histories.values())
    assert any(moves[-1][0] == "WON" and int(deal) % 7 == 0 for deal, moves in histories.items())
    late = [deal for deal in histories if int(deal) % 5 == 0]  # their moves come last, in a backfill
    batches = [
        [_snapshot(deal, c, at)] for deal in histories if deal not in late for c, at in histories[deal]
    ]
    rng.shuffle(batches)  # deliveries of different deals interleave
    batches.append([_snapshot(deal, c, at) for deal in late for c, at in histories[deal]])
    for batch in batches:
        async with sessions.begin() as session:
            index = await load_stage_index(session, connection.id)
            await mirror_snapshots(session, connection.id, batch, index, "webhook")
    async with sessions.begin() as session:
        deleted = [deal for deal in histories if int(deal) % 7 == 0]
        assert await tombstone(session, connection.id, deleted, T0 + timedelta(days=40)) == len(deleted)
    async with sessions() as session:
        return await load_funnel(session, funnel.id)


async def _both_ways(
    session: AsyncSession, ctx: FunnelContext, period: Period, deleted: transitions.DeletedDeals
) -> tuple[tuple[Any, Any, Any], tuple[Any, Any, Any]]:
    entries = await transitions.stage_entries(session, ctx, period, deleted)
    exits, medians = await transitions.stage_exits(session, ctx, period, deleted)
    daily = await stage_flow(session, ctx, period, deleted)
    return (entries, exits, medians), daily


async def test_the_page_numbers_are_the_same_both_ways_and_the_kept_counts_a_fresh_count(
    database_url: str,
) -> None:
    """One seeded database for both checks: seeding it is most of the test's time."""
    async with open_sessions(database_url) as sessions:
        ctx = await _seed(sessions)
        async with sessions() as session:
            await _assert_the_page_numbers_are_the_same_both_ways(session, ctx)
        await _assert_kept_counts_equal_a_fresh_count(sessions)


async def _assert_the_page_numbers_are_the_same_both_ways(session: AsyncSession, ctx: FunnelContext) -> None:
    listed = await transitions.deleted_deals(session, ctx)
    assert listed  # some deals are deleted
    for period in PERIODS:
        for deleted in (listed, None):  # the ids listed, or read in the statement
            (entries, exits, medians), (d_entries, d_exits, d_medians) = await _both_ways(
                session, ctx, period, deleted
            )
            assert d_entries == entries, period
            assert d_exits == exits, period
            assert d_medians.keys() == medians.keys(), period
            for stage_id, (value, samples) in medians.items():
                # SQLite's reference reads times through julianday(): exact to ~1e-4 s.
                assert d_medians[stage_id] == (pytest.approx(value, abs=1e-3), samples)
            won = await won_entries(session, ctx, period)
            stages = {s.id for s in ctx.stages}  # the reference also counts other funnels' stages
            assert await daily_won.won_entries(session, ctx, period, deleted) == {
                stage_id: n for stage_id, n in won.items() if stage_id in stages
            }, period
            page = build_flow(ctx, flow_buckets(ctx, entries, exits), medians, won)
            assert build_flow(ctx, flow_buckets(ctx, d_entries, d_exits), d_medians, won) == page
    # Not vacuous: every stage was entered and left in the long period.
    entries, exits, _ = await stage_flow(session, ctx, PERIODS[0], listed)
    assert set(entries) == {s.id for s in ctx.stages} and len(exits) == len(ctx.stages)
    assert len(await won_entries(session, ctx, PERIODS[0])) >= 4


async def _assert_kept_counts_equal_a_fresh_count(sessions: async_sessionmaker[AsyncSession]) -> None:
    """What the mirror kept transaction by transaction (out of order included) is what counting
    all the transitions at once gives: the same durations, row by row. The monthly sums the
    triggers keep are the daily rows' sums, before the rebuild and after it."""
    kept = await _table(sessions)
    await _assert_months_sum_the_days(sessions)
    async with sessions.begin() as session:
        await daily_counts.rebuild(session)
    assert await _table(sessions) == kept
    assert kept[0] and kept[1]
    await _assert_months_sum_the_days(sessions)


async def _assert_months_sum_the_days(sessions: async_sessionmaker[AsyncSession]) -> None:
    pairs = [
        (DailyStageEntries, MonthlyStageEntries, ["stage_id"], "entries"),
        (DailyStageExits, MonthlyStageExits, ["from_stage_id", "to_stage_id"], "exits"),
        (DailyStageDurations, MonthlyStageDurations, ["from_stage_id", "bucket"], "exits"),
    ]
    async with sessions() as session:
        for daily, monthly, keys, count in pairs:
            summed: Counter[tuple[Any, ...]] = Counter()
            for row in (await session.execute(select(daily.__table__))).mappings():
                summed[(*(row[k] for k in keys), row["day"].replace(day=1))] += row[count]
            months: Counter[tuple[Any, ...]] = Counter()
            for row in (await session.execute(select(monthly.__table__))).mappings():
                months[(*(row[k] for k in keys), row["month"])] += row[count]
            assert +months == +summed, monthly.__tablename__  # rows at zero aside
            assert summed and all(n >= 0 for n in months.values())


async def _table(
    sessions: async_sessionmaker[AsyncSession],
) -> tuple[list[tuple[Any, ...]], ...]:
    async with sessions() as session:
        entries = (
            await session.execute(select(DailyStageEntries.__table__).order_by("stage_id", "day"))
        ).all()
        exits = (
            await session.execute(
                select(DailyStageExits.__table__).order_by("from_stage_id", "day", "to_stage_id")
            )
        ).all()
        durations = (
            await session.execute(
                select(DailyStageDurations.__table__).order_by("from_stage_id", "bucket", "day")
            )
        ).all()
        outcomes = (
            await session.execute(
                select(DailyOutcomeEntries.__table__).order_by("outcome_stage_id", "day", "stage_id")
            )
        ).all()
    assert outcomes and all(row.entries > 0 for row in outcomes)
    per_day: Counter[tuple[int, Any]] = Counter()
    kept_durations = []
    for row in durations:
        values = list(daily_counts.decode_durations(row.durations))
        assert len(values) == row.exits
        assert {duration_bucket(int(v)) for v in values} == {row.bucket}
        per_day[(row.from_stage_id, row.day)] += row.exits
        # The same values: a row written by several transactions holds their runs one after another.
        kept_durations.append((row.from_stage_id, row.bucket, row.day, row.exits, sorted(values)))
    exited: Counter[tuple[int, Any]] = Counter()
    for row in exits:
        exited[(row.from_stage_id, row.day)] += row.exits
    assert per_day == exited  # every exit has its duration, once
    return (
        [tuple(r) for r in entries],
        [tuple(r) for r in exits],
        kept_durations,
        [tuple(r) for r in outcomes],
    )


# --- pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "days", "edges"),
    [
        ("2026-03-01T00:00", "2026-03-03T00:00", ("2026-03-01", "2026-03-03"), []),
        ("2026-03-01T06:00", "2026-03-03T00:00", ("2026-03-02", "2026-03-03"), [("2026-03-01T06:00", "2026-03-02T00:00")]),
        ("2026-03-01T06:00", "2026-03-01T07:00", None, [("2026-03-01T06:00", "2026-03-01T07:00")]),
        ("2026-03-01T06:00", "2026-03-02T07:00", None, [("2026-03-01T06:00", "2026-03-02T07:00")]),
        ("2026-03-01T00:00", "2026-03-02T07:00", ("2026-03-01", "2026-03-02"), [("2026-03-02T00:00", "2026-03-02T07:00")]),
    ],
)  # fmt: skip
def test_split_period(
    start: str, end: str, days: tuple[str, str] | None, edges: list[tuple[str, str]]
) -> None:
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)

    whole, parts = split_period(Period(start=at(start), end=at(end)))
    assert (None if whole is None else tuple(d.isoformat() for d in whole)) == days
    assert [(p.start, p.end) for p in parts] == [(at(a), at(b)) for a, b in edges]


@pytest.mark.parametrize(
    ("first", "last", "months", "around"),
    [
        ("2026-03-01", "2026-05-01", ("2026-03-01", "2026-05-01"), []),
        ("2026-02-10", "2026-04-10", ("2026-03-01", "2026-04-01"), [("2026-02-10", "2026-03-01"), ("2026-04-01", "2026-04-10")]),
        ("2026-06-06", "2026-12-04", ("2026-07-01", "2026-12-01"), [("2026-06-06", "2026-07-01"), ("2026-12-01", "2026-12-04")]),
        ("2026-12-15", "2027-02-01", ("2027-01-01", "2027-02-01"), [("2026-12-15", "2027-01-01")]),
        ("2026-03-02", "2026-03-31", None, [("2026-03-02", "2026-03-31")]),
        ("2026-03-02", "2026-04-30", None, [("2026-03-02", "2026-04-30")]),
        ("2026-01-31", "2026-03-01", ("2026-02-01", "2026-03-01"), [("2026-01-31", "2026-02-01")]),
    ],
)  # fmt: skip
def test_split_months(
    first: str, last: str, months: tuple[str, str] | None, around: list[tuple[str, str]]
) -> None:
    found, days = split_months((date.fromisoformat(first), date.fromisoformat(last)))
    assert (None if found is None else tuple(d.isoformat() for d in found)) == months
    assert [(a.isoformat(), b.isoformat()) for a, b in days] == around


def test_duration_buckets_sort_as_their_durations() -> None:
    """The median's bucket search counts ranks bucket by bucket: buckets must never go down as
    durations go up (negative durations included), and split each octave in four."""
    values = sorted(
        {*range(-70, 70), *(s * 2**k + d for k in range(60) for s in (1, -1) for d in (-1, 0, 1))}
    )
    buckets = [duration_bucket(v) for v in values]
    assert buckets == sorted(buckets)
    assert duration_bucket(0) == 0 and duration_bucket(-1) < 0 < duration_bucket(1)
    quarters = [duration_bucket(q * 2**18) for q in (4, 5, 6, 7, 8)]  # 2**20 .. 2**21
    assert quarters == list(range(quarters[0], quarters[0] + 5))
    assert duration_bucket(5 * 2**18 - 1) == duration_bucket(2**20) == duration_bucket(2**20 + 1)


@pytest.mark.parametrize(
    ("start", "end", "days", "add", "subtract"),
    [
        # a 30-day page at 17:55: the first partial day read as is (6 hours), today as its whole day
        # less the rest of it
        ("2026-03-01T17:55", "2026-03-31T17:55", ("2026-03-02", "2026-04-01"),
         [("2026-03-01T17:55", "2026-03-02T00:00")], [("2026-03-31T17:55", "2026-04-01T00:00")]),
        ("2026-03-01T05:00", "2026-03-03T06:00", ("2026-03-01", "2026-03-03"),
         [("2026-03-03T00:00", "2026-03-03T06:00")], [("2026-03-01T00:00", "2026-03-01T05:00")]),
        ("2026-03-01T06:00", "2026-03-01T23:00", ("2026-03-01", "2026-03-02"), [],
         [("2026-03-01T00:00", "2026-03-01T06:00"), ("2026-03-01T23:00", "2026-03-02T00:00")]),
        ("2026-03-01T06:00", "2026-03-01T07:00", None, [("2026-03-01T06:00", "2026-03-01T07:00")], []),
        ("2026-03-01T06:00", "2026-03-02T07:00", None, [("2026-03-01T06:00", "2026-03-02T07:00")], []),
    ],
)  # fmt: skip
def test_plan_period(
    start: str,
    end: str,
    days: tuple[str, str] | None,
    add: list[tuple[str, str]],
    subtract: list[tuple[str, str]],
) -> None:
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)

    plan = plan_period(Period(start=at(start), end=at(end)))
    assert (None if plan.days is None else tuple(d.isoformat() for d in plan.days)) == days
    assert [(p.start, p.end) for p in plan.add] == [(at(a), at(b)) for a, b in add]
    assert [(p.start, p.end) for p in plan.subtract] == [(at(a), at(b)) for a, b in subtract]


@pytest.mark.parametrize("size", [1, 2, 3, 64, 2000, 2001, 30_000])
@pytest.mark.parametrize("spread", [10**3, 10**9], ids=["few-buckets", "many-buckets"])
def test_median_from_the_middle_buckets(size: int, spread: int) -> None:
    """Exact against statistics.median, with deleted values taken out, reading only the values of
    the bucket(s) middle_buckets picks: as the page does, from the counts per bucket net of the
    deleted values. Even sizes whose middle pair straddles two buckets are among them."""
    rng = random.Random(size * spread)
    values = [float(rng.randrange(-spread // 100, spread)) for _ in range(size)]
    removed = sorted(rng.sample(values, size // 3))
    counts: Counter[int] = Counter(duration_bucket(int(v)) for v in values)
    counts.subtract(duration_bucket(int(v)) for v in removed)
    left_out = Counter(removed)  # the values taken out, as a multiset: each once per time taken
    kept = []
    for value in values:
        if left_out[value]:
            left_out[value] -= 1
        else:
            kept.append(value)
    found = middle_buckets(counts)
    if not kept:
        assert found is None
        return
    assert found is not None
    n, below, buckets = found
    assert n == len(kept) and below == sum(1 for v in kept if duration_bucket(int(v)) < buckets[0])
    inside = sorted(v for v in values if duration_bucket(int(v)) in buckets)
    gone = [v for v in removed if duration_bucket(int(v)) in buckets]
    assert middle_value(inside, gone, n, below) == statistics.median(kept)
    assert len(inside) < size or size < 64  # not vacuous: only part of the values is read


def test_the_middle_pair_can_straddle_two_buckets() -> None:
    low, high = 2**20 - 5, 2**20 + 5  # the two middle values, in adjacent buckets
    counts = Counter({duration_bucket(100): 1, duration_bucket(low): 1, duration_bucket(high): 1, 99: 1})
    assert middle_buckets(counts) == (4, 1, [duration_bucket(low), duration_bucket(high)])
    assert middle_value([low, high], [], 4, 1) == (low + high) / 2
