"""Conversion and time in stage from entries and exits (app.analytics.flow), on both databases.

A hand-built history written through the mirror (so from_stage_entered_at is set the way production
sets it), analysed for the day P0. Stages: A, B, C (process), WON (success), LOST (failure).
Minutes are from P0:

    1: A 0, B 10, C 30, WON 90             won; every step taken
    2: A 0, C 20                           skips B: still past A
    3: A 0, B 5, A 15, B 45, LOST 105      back to A, re-enters A and B, then lost
    4: A 0, LOST 60                        lost from A: not a step forward
    5: A -1440, B 30                       entered A the day before: neither A's entry nor its exit
    6: A 0                                 still in A
    7: A 0, B 10, then deleted             counted nowhere
    8: A 1380, B 1500                      entered A inside the day, left after it: counts
    9: A 1560                              after the day

Entries in the day: A {1, 2, 3, 3', 4, 6, 8} = 7; B {1, 3, 3', 5} = 4; C {1, 2} = 2; WON {1};
LOST {3, 4}. Exits of those entries: A -> B (1, 3, 3', 8), A -> C (2), A -> LOST (4), 6 waiting;
B -> C (1), B -> A (3), B -> LOST (3'), 5 waiting; C -> WON (1), 2 waiting.
Minutes in A: 10, 20, 5, 30, 60, 120 (median 25); in B: 20, 10, 60 (median 20); in C: 60.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.analytics import flow, service, transitions
from app.analytics.funnels import FunnelContext, load_funnel
from app.analytics.schemas import Period
from app.connections.models import Connection
from app.deals.mirror import load_stage_index, mirror_snapshots, tombstone
from app.deals.models import Deal, StageTransition
from app.funnels.models import Funnel, FunnelStage
from connectors.base import DealSnapshot
from tests.support.db import add_funnel, open_sessions

P0 = datetime(2026, 3, 2, tzinfo=UTC)
DAY = Period(start=P0, end=P0 + timedelta(days=1))
STAGES = [("A", "process"), ("B", "process"), ("C", "process"), ("WON", "success"), ("LOST", "failure")]
HISTORY = {
    "1": [("A", 0), ("B", 10), ("C", 30), ("WON", 90)],
    "2": [("A", 0), ("C", 20)],
    "3": [("A", 0), ("B", 5), ("A", 15), ("B", 45), ("LOST", 105)],
    "4": [("A", 0), ("LOST", 60)],
    "5": [("A", -1440), ("B", 30)],
    "6": [("A", 0)],
    "7": [("A", 0), ("B", 10)],
    "8": [("A", 1380), ("B", 1500)],
    "9": [("A", 1560)],
}


@dataclass
class Seeded:
    sessions: async_sessionmaker[AsyncSession]
    ctx: FunnelContext
    stage_ids: dict[str, int]
    deleted_deal_id: int


def snapshot(deal: str, code: str, minutes: int) -> DealSnapshot:
    return DealSnapshot(
        id=deal,
        pipeline_id="5",
        stage_id=f"C5:{code}",
        title=f"Deal {deal}",
        updated_at=P0 + timedelta(minutes=minutes),
    )


@pytest.fixture
async def seeded(database_url: str) -> AsyncIterator[Seeded]:
    async with open_sessions(database_url) as sessions:
        async with sessions.begin() as session:
            # A template key the library does not have: the stages come from the database alone.
            connection, funnel = await add_funnel(session, STAGES, template_key="hand.built", name="Flow")
        # One webhook batch per deal, in the order the CRM would have sent them.
        for deal, moves in HISTORY.items():
            async with sessions.begin() as session:
                index = await load_stage_index(session, connection.id)
                snapshots = [snapshot(deal, code, minutes) for code, minutes in moves]
                await mirror_snapshots(session, connection.id, snapshots, index, "webhook")
        async with sessions.begin() as session:
            assert await tombstone(session, connection.id, ["7"], P0 + timedelta(hours=2)) == 1
        async with sessions() as session:
            ctx = await load_funnel(session, funnel.id)
            deleted = await session.scalar(select(Deal.id).where(Deal.crm_deal_id == "7"))
        assert deleted is not None
        yield Seeded(sessions, ctx, {s.code: s.id for s in ctx.stages}, deleted)


def by_stage(rows: list[Any]) -> dict[str, dict[str, Any]]:
    return {row.stage: row.model_dump(exclude={"stage"}) for row in rows}


EXPECTED_CONVERSION = {
    # 2 skipped B (counts), 4 was lost (does not), 6 has not moved; 3 entered A twice.
    "A": {"reached": 7, "next_stage": "B", "to_next": 5, "to_next_pct": 71.4, "to_won": 1, "to_won_pct": 14.3},
    # 3 went back to A, then lost from its second entry; 5 entered B in the day and is waiting.
    "B": {"reached": 4, "next_stage": "C", "to_next": 1, "to_next_pct": 25.0, "to_won": 1, "to_won_pct": 25.0},
    "C": {"reached": 2, "next_stage": "WON", "to_next": 1, "to_next_pct": 50.0, "to_won": 1, "to_won_pct": 50.0},
    "WON": {"reached": 1, "next_stage": None, "to_next": 0, "to_next_pct": None, "to_won": 1, "to_won_pct": None},
    "LOST": {"reached": 2, "next_stage": None, "to_next": 0, "to_next_pct": None, "to_won": 0, "to_won_pct": None},
}  # fmt: skip
EXPECTED_TIMES = {
    "A": {"samples": 6, "median_seconds": 1500.0},  # 5, 10, 20 | 30, 60, 120 minutes
    "B": {"samples": 3, "median_seconds": 1200.0},  # 10, 20, 60 minutes
    "C": {"samples": 1, "median_seconds": 3600.0},
}


async def test_page_numbers(seeded: Seeded) -> None:
    """The page's path: statements spread over several connections."""
    result = await service.funnel_analytics(seeded.sessions, seeded.ctx, DAY)
    assert by_stage(result.conversion) == EXPECTED_CONVERSION
    # Final stages nobody left are not listed.
    assert by_stage(result.time_in_stage) == EXPECTED_TIMES


async def test_one_session_gives_the_same_numbers(seeded: Seeded) -> None:
    async with seeded.sessions() as session:
        conversion, times = await flow.funnel_flow(session, seeded.ctx, DAY)
        buckets, medians = await flow.flow_rows(session, seeded.ctx, DAY)
    assert by_stage(conversion) == EXPECTED_CONVERSION
    assert by_stage(times) == EXPECTED_TIMES
    ids = seeded.stage_ids
    # Entries by the progress (sort) of the stage their exit went to; None: failure or not left.
    assert buckets == {
        ids["A"]: [(1, 4), (2, 1), (None, 2)],
        ids["B"]: [(0, 1), (2, 1), (None, 2)],
        ids["C"]: [(3, 1), (None, 1)],
        ids["WON"]: [(None, 1)],
        ids["LOST"]: [(None, 2)],
    }
    assert {stage: (round(median, 3), n) for stage, (median, n) in medians.items()} == {
        ids["A"]: (1500.0, 6),
        ids["B"]: (1200.0, 3),
        ids["C"]: (3600.0, 1),
    }


async def test_deleted_deals_are_excluded_listed_or_read_in_the_statement(seeded: Seeded) -> None:
    """Few deleted deals are written into the statements; many are read by them (a CTE): same numbers."""
    async with seeded.sessions() as session:
        listed = await transitions.deleted_deals(session, seeded.ctx)
        assert listed == (seeded.deleted_deal_id,)
        for deleted in (listed, None):
            entries = await transitions.stage_entries(session, seeded.ctx, DAY, deleted)
            exits, medians = await transitions.stage_exits(session, seeded.ctx, DAY, deleted)
            assert (
                flow.flow_buckets(seeded.ctx, entries, exits)
                == (await flow.flow_rows(session, seeded.ctx, DAY))[0]
            )
            assert {s: n for s, (_, n) in medians.items()} == {
                seeded.stage_ids["A"]: 6,
                seeded.stage_ids["B"]: 3,
                seeded.stage_ids["C"]: 1,
            }
        # Not excluding anything: deal 7 then adds an entry into A and B and A's exit to B.
        entries = await transitions.stage_entries(session, seeded.ctx, DAY, ())
        exits, medians = await transitions.stage_exits(session, seeded.ctx, DAY, ())
    assert (entries[seeded.stage_ids["A"]], entries[seeded.stage_ids["B"]]) == (8, 5)
    assert medians[seeded.stage_ids["A"]][1] == 7


async def test_stage_groups_split_the_work_not_the_numbers(seeded: Seeded) -> None:
    groups = transitions.stage_groups(seeded.ctx)
    assert [[s.code for s in g] for g in groups] == [["A", "C", "LOST"], ["B", "WON"]]
    async with seeded.sessions() as session:
        deleted = await transitions.deleted_deals(session, seeded.ctx)
        whole = await transitions.stage_exits(session, seeded.ctx, DAY, deleted)
        parts = [await transitions.stage_exits(session, seeded.ctx, DAY, deleted, g) for g in groups]
    assert {k: v for exits, _ in parts for k, v in exits.items()} == whole[0]
    assert {k: v for _, medians in parts for k, v in medians.items()} == whole[1]


async def test_the_period_bounds(seeded: Seeded) -> None:
    """The day before: only deal 5's entry into A, which it left for B 1470 minutes later."""
    before = Period(start=P0 - timedelta(days=1), end=P0)
    result = await service.funnel_analytics(seeded.sessions, seeded.ctx, before)
    conversion = by_stage(result.conversion)
    assert {code: row["reached"] for code, row in conversion.items()} == {
        "A": 1, "B": 0, "C": 0, "WON": 0, "LOST": 0,
    }  # fmt: skip
    assert (conversion["A"]["to_next"], conversion["A"]["to_won"]) == (1, 0)
    assert by_stage(result.time_in_stage)["A"] == {"samples": 1, "median_seconds": 1470 * 60.0}
    # The day after: deal 8 left A then (its entry was the day before, so that exit is not
    # counted), and deal 9 entered A.
    after = Period(start=P0 + timedelta(days=1), end=P0 + timedelta(days=2))
    result = await service.funnel_analytics(seeded.sessions, seeded.ctx, after)
    conversion = by_stage(result.conversion)
    assert (conversion["A"]["reached"], conversion["A"]["to_next"]) == (1, 0)
    assert (conversion["B"]["reached"], conversion["B"]["to_next"]) == (1, 0)
    assert by_stage(result.time_in_stage)["A"] == {"samples": 0, "median_seconds": None}


# --- SQLite's median: a sampled window, or the whole stage sorted when the sample misleads -------------


@dataclass
class Bulk:
    ctx: FunnelContext
    durations: dict[str, list[int]]  # stage code -> seconds of its exits, deleted deals' left out
    sampled: dict[str, list[int]]  # the exits whose id is a multiple of SAMPLE_EVERY, all deals'


async def seed_bulk(sessions: async_sessionmaker[AsyncSession], misleading: bool) -> Bulk:
    """2,001 deals through A -> B, the first 1,600 on to C: 2,001 exits from A and 1,600 from B, enough
    for the sampled window; every 25th deal deleted (80), leaving 1,921 (odd) and 1,536 (even).
    Misleading: the sampled exits (ids that are multiples of SAMPLE_EVERY) are the longest, so the
    window sits far above the middle."""
    rng = random.Random(7)
    every = transitions.SAMPLE_EVERY
    async with sessions.begin() as session:
        connection = Connection(name="b24", crm="bitrix24", base_url="http://x/", credentials_encrypted="x")
        session.add(connection)
        await session.flush()
        funnel = Funnel(
            connection_id=connection.id, template_key="hand.built", name="Bulk", crm_pipeline_id="5"
        )
        session.add(funnel)
        await session.flush()
        stages: dict[str, FunnelStage] = {}
        for sort, code in enumerate(["A", "B", "C"]):
            stages[code] = FunnelStage(
                funnel_id=funnel.id, code=code, name=code, sort=sort, semantics="process", crm_stage_id=code
            )
            session.add(stages[code])
        await session.flush()
        deals: list[dict[str, Any]] = []
        moves: list[dict[str, Any]] = []
        durations: dict[str, list[int]] = {"A": [], "B": []}
        sampled: dict[str, list[int]] = {"A": [], "B": []}
        for number in range(1, 2002):
            path = ["A", "B", "C"] if number <= 1600 else ["A", "B"]
            at = P0 + timedelta(seconds=number)
            entered: datetime | None = None
            for position, code in enumerate(path):
                transition_id = len(moves) + 1
                if position:
                    left = path[position - 1]
                    sample = transition_id % every == 0
                    seconds = rng.randrange(60, 86_400)
                    if misleading:
                        seconds = 1_000_000 + number if sample else number
                    if number % 25:
                        durations[left].append(seconds)
                    if sample:
                        sampled[left].append(seconds)
                    at += timedelta(seconds=seconds)
                moves.append(
                    {"id": transition_id, "deal_id": number, "to_crm_stage_id": code,
                     "from_crm_stage_id": path[position - 1] if position else None,
                     "from_stage_id": stages[path[position - 1]].id if position else None,
                     "to_stage_id": stages[code].id, "at": at, "from_stage_entered_at": entered,
                     "source": "webhook", "created_at": P0}
                )  # fmt: skip
                entered = at
            deals.append(
                {"id": number, "connection_id": connection.id, "crm_deal_id": str(number),
                 "funnel_id": funnel.id, "stage_id": stages[path[-1]].id, "crm_pipeline_id": "5",
                 "crm_stage_id": path[-1], "managed": True, "title": "", "fields": {},
                 "crm_updated_at": entered, "stage_entered_at": entered, "created_at": P0, "updated_at": P0,
                 "deleted_at": None if number % 25 else P0}
            )  # fmt: skip
        await session.execute(insert(Deal), deals)
        await session.execute(insert(StageTransition), moves)
    async with sessions() as session:
        ctx = await load_funnel(session, funnel.id)
    return Bulk(ctx, durations, sampled)


@pytest.mark.parametrize("misleading", [False, True], ids=["window", "sorted"])
async def test_medians_are_exact_however_the_sample_falls(database_url: str, misleading: bool) -> None:
    period = Period(start=P0, end=P0 + timedelta(days=60))
    async with open_sessions(database_url) as sessions:
        bulk = await seed_bulk(sessions, misleading)
        async with sessions() as session:
            deleted = await transitions.deleted_deals(session, bulk.ctx)
            assert deleted is not None and len(deleted) == 80
            listed = await transitions.stage_exits(session, bulk.ctx, period, deleted)
            read = await transitions.stage_exits(
                session, bulk.ctx, period, None
            )  # as beyond DELETED_LIST_MAX
            entries = await transitions.stage_entries(session, bulk.ctx, period, deleted)
    assert read == listed
    ids = {s.code: s.id for s in bulk.ctx.stages}
    assert entries == {ids["A"]: 1921, ids["B"]: 1921, ids["C"]: 1536}
    exits, medians = listed
    assert exits == {ids["A"]: {1: 1921}, ids["B"]: {2: 1536}}
    for code, values in bulk.durations.items():
        median, samples = medians[ids[code]]
        assert samples == len(values)
        assert median == pytest.approx(statistics.median(values), abs=1e-3)
        # Which SQLite path that was, known from the data: the middle values inside the sample's
        # window, or (misleading) outside it, where only sorting the whole stage finds them.
        window = transitions._window([float(v) for v in bulk.sampled[code]])
        assert window is not None
        middle = sorted(values)[(len(values) - 1) // 2 : len(values) // 2 + 1]
        assert all(window[0] <= v <= window[1] for v in middle) is not misleading
