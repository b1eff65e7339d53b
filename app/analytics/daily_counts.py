"""Keeping the daily stage counts (app.analytics.models) equal to the transitions they count.

The mirror is the only writer of stage transitions (it only appends them), and it calls `record` with
the transitions it has just added, in the same transaction: counts and transitions commit together
or not at all. Rows are upserted (INSERT ... ON CONFLICT DO UPDATE adding to what is there), so
concurrent writers of the same stage and day add up instead of overwriting each other; keys are
written in sorted order so two such transactions on PostgreSQL lock them in the same order.

The outcome counts (entries per stage the deal's latest transition went to: the page's won entries)
depend on each deal's whole history, so `record` also reads the histories of the deals it was given
and moves their entries from the old outcome to the new one. They equal the reference query
(app.analytics.flow.won_entries, which asks for deals whose current stage is the success stage) as
long as a deal's current stage is the one its latest transition went to, which the mirror keeps
together (app.deals.mirror); a stage mapping changed under a deal that has not moved since would
make the two differ until the deal moves again.
"""

from __future__ import annotations

import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.models import (
    UNMAPPED_STAGE,
    DailyOutcomeEntries,
    DailyStageDurations,
    DailyStageEntries,
    DailyStageExits,
)
from app.db import Base, dialect_insert
from app.deals.models import StageTransition

_UPSERT_CHUNK = 500  # rows per INSERT: 5 parameters a row, far below SQLite's limit
_REBUILD_BATCH = 10_000


def utc_day(at: datetime) -> date:
    return at.astimezone(UTC).date()


def microseconds(start: datetime, end: datetime) -> int:
    """An exit's time in the stage, exactly (integer microseconds, no float rounding)."""
    return (end - start) // timedelta(microseconds=1)


def duration_bucket(us: int) -> int:
    """The bucket of a duration (microseconds): a quarter of an octave wide (2**k, 1.25, 1.5 and
    1.75 * 2**k start one), so buckets sort as their durations do (negatives, from clocks out of
    step, mirror the positives below zero). Integer arithmetic: the same on every machine and in
    every migration. Why a quarter (100,000 deals, 180 days, SQLite): the page sums 49,000 rows
    and reads 19,000 durations; half an octave, 29,000 rows in about the same time and 40,000
    durations; an eighth, 75,000 rows in twice the time and 9,000 durations."""
    if us < 0:
        return -duration_bucket(-us) - 1
    bits = us.bit_length()
    quarter = (us >> (bits - 3)) & 3 if bits >= 3 else 0
    return 4 * bits + quarter


@dataclass
class Tally:
    """Entries per (stage, day), exits per (stage, day, stage moved to), and the exits' durations per
    (stage, day, duration bucket)."""

    entries: Counter[tuple[int, date]] = field(default_factory=Counter)
    exits: Counter[tuple[int, date, int]] = field(default_factory=Counter)
    durations: dict[tuple[int, int, date], list[int]] = field(default_factory=dict)  # stage, bucket, day

    def add(
        self,
        from_stage_id: int | None,
        to_stage_id: int | None,
        at: datetime,
        from_stage_entered_at: datetime | None,
    ) -> None:
        if to_stage_id is not None:
            self.entries[(to_stage_id, utc_day(at))] += 1
        if from_stage_id is not None and from_stage_entered_at is not None:
            target = UNMAPPED_STAGE if to_stage_id is None else to_stage_id
            day = utc_day(from_stage_entered_at)
            self.exits[(from_stage_id, day, target)] += 1
            us = microseconds(from_stage_entered_at, at)
            self.durations.setdefault((from_stage_id, duration_bucket(us), day), []).append(us)


async def record(session: AsyncSession, transitions: Iterable[StageTransition]) -> None:
    """Count transitions the session is about to commit (they need not be flushed yet)."""
    added = list(transitions)
    tally = Tally()
    for t in added:
        tally.add(t.from_stage_id, t.to_stage_id, t.at, t.from_stage_entered_at)
    await _upsert(session, tally)
    await _record_outcomes(session, added)


async def _upsert(session: AsyncSession, tally: Tally) -> None:
    await _add_up(
        session,
        DailyStageEntries,
        ["stage_id", "day"],
        ["entries"],
        [{"stage_id": s, "day": d, "entries": n} for (s, d), n in sorted(tally.entries.items())],
    )
    await _add_up(
        session,
        DailyStageExits,
        ["from_stage_id", "day", "to_stage_id"],
        ["exits"],
        [
            {"from_stage_id": s, "day": d, "to_stage_id": t, "exits": n}
            for (s, d, t), n in sorted(tally.exits.items())
        ],
    )
    # Each write's durations in ascending order; a row written twice holds two sorted runs, which the
    # page sorts together with the rest of the bucket's rows anyway (Python's sort merges runs).
    await _add_up(
        session,
        DailyStageDurations,
        ["from_stage_id", "bucket", "day"],
        ["exits", "durations"],
        [
            {
                "from_stage_id": s,
                "bucket": b,
                "day": d,
                "exits": len(us),
                "durations": encode_durations(sorted(us)),
            }
            for (s, b, d), us in sorted(tally.durations.items())
        ],
    )


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


async def _add_up(
    session: AsyncSession, model: type[Base], keys: list[str], columns: list[str], rows: list[dict[str, Any]]
) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET column = column + the new value (durations: ||),
    for each row in order (sorted: two transactions on PostgreSQL lock shared rows in the same order).
    Executed as one executemany: the statement is compiled once and cached, where a multi-row VALUES
    list is compiled afresh for each size (about 60 ms for 500 rows, most of a mirror batch's added
    time when they were)."""
    if not rows:
        return
    table = _table(model)
    insert = dialect_insert(session, table)
    added = {column: table.c[column] + insert.excluded[column] for column in columns}
    await session.execute(insert.on_conflict_do_update(index_elements=keys, set_=added), rows)


# A deal's transitions as the outcome counts need them: (id, to_stage_id, at).
Move = tuple[int, int | None, datetime]


def outcome_tally(moves: Sequence[Move], sign: int, tally: Counter[tuple[int, date, int]]) -> None:
    """Add (sign 1) or take out (-1) one deal's entries under its outcome: the stage its latest
    transition (highest id: the mirror appends them in time order) went to. A deal whose latest
    transition went to an unmapped stage has no outcome a page can ask for, so none is kept."""
    if not moves:
        return
    outcome = max(moves)[1]
    if outcome is None:
        return
    for _, to_stage_id, at in moves:
        if to_stage_id is not None:
            tally[(outcome, utc_day(at), to_stage_id)] += sign


async def _record_outcomes(session: AsyncSession, added: Sequence[StageTransition]) -> None:
    """Move the entries of every deal that has new transitions from its old outcome to its new one.

    The flush first writes this transaction's deals and transitions: the deal rows stay locked until
    commit, so on PostgreSQL a concurrent mirror of the same deal waits here and then reads (READ
    COMMITTED: a fresh snapshot per statement) the history this one committed."""
    if not added:
        return
    await session.flush()
    new = {t.id for t in added}
    deals = sorted({t.deal_id for t in added})
    histories: dict[int, list[Move]] = {}
    t = StageTransition
    for start in range(0, len(deals), _UPSERT_CHUNK):
        for deal_id, id_, to_stage_id, at in await session.execute(
            select(t.deal_id, t.id, t.to_stage_id, t.at).where(
                t.deal_id.in_(deals[start : start + _UPSERT_CHUNK])
            )
        ):
            histories.setdefault(deal_id, []).append((id_, to_stage_id, at))
    tally: Counter[tuple[int, date, int]] = Counter()
    for moves in histories.values():
        outcome_tally([m for m in moves if m[0] not in new], -1, tally)
        outcome_tally(moves, 1, tally)
    await _upsert_outcomes(session, tally)


async def _upsert_outcomes(session: AsyncSession, tally: Counter[tuple[int, date, int]]) -> None:
    """Add the changes (most cancel out: a deal's earlier entries leave one outcome for the next),
    then drop the rows left at zero, so the rows are what a fresh count writes."""
    rows: list[dict[str, Any]] = [
        {"outcome_stage_id": o, "day": d, "stage_id": s, "entries": n}
        for (o, d, s), n in sorted(tally.items())
        if n
    ]
    await _add_up(session, DailyOutcomeEntries, ["outcome_stage_id", "day", "stage_id"], ["entries"], rows)
    emptied = [
        {"key_outcome": r["outcome_stage_id"], "key_day": r["day"], "key_stage": r["stage_id"]}
        for r in rows
        if r["entries"] < 0
    ]
    if emptied:
        x = _table(DailyOutcomeEntries).c
        await session.execute(
            delete(_table(DailyOutcomeEntries)).where(
                x.outcome_stage_id == bindparam("key_outcome"),
                x.day == bindparam("key_day"),
                x.stage_id == bindparam("key_stage"),
                x.entries == 0,
            ),
            emptied,
        )


def encode_durations(values: Iterable[float]) -> str:
    """Durations as text that concatenates (SQL ||) into the list of both: 16 hex digits each, the
    big-endian IEEE 754 double of the microseconds (exact below 2**53 us, 285 years). Decoding is
    two C calls (bytes.fromhex, array.frombytes), against ~30 ms to parse 300,000 decimal numbers."""
    packed = array("d", map(float, values))
    if sys.byteorder == "little":
        packed.byteswap()
    return packed.tobytes().hex()


def decode_durations(text: str) -> array[float]:
    values = array("d", bytes.fromhex(text))
    if sys.byteorder == "little":
        values.byteswap()
    return values


async def rebuild(session: AsyncSession) -> None:
    """Count every transition afresh (what migration 0008 did once): for data loaded around the
    mirror, such as the benchmark's seed."""
    await session.execute(delete(DailyOutcomeEntries))
    await session.execute(delete(DailyStageDurations))
    await session.execute(delete(DailyStageExits))
    await session.execute(delete(DailyStageEntries))
    t = StageTransition
    query = select(t.id, t.from_stage_id, t.to_stage_id, t.at, t.from_stage_entered_at, t.deal_id).order_by(
        t.id
    )
    tally, last_id = Tally(), 0
    histories: dict[int, list[Move]] = {}
    while rows := (await session.execute(query.where(t.id > last_id).limit(_REBUILD_BATCH))).all():
        for id_, from_stage_id, to_stage_id, at, entered, deal_id in rows:
            tally.add(from_stage_id, to_stage_id, at, entered)
            histories.setdefault(deal_id, []).append((id_, to_stage_id, at))
        last_id = rows[-1][0]
    await _upsert(session, tally)
    outcomes: Counter[tuple[int, date, int]] = Counter()
    for moves in histories.values():
        outcome_tally(moves, 1, outcomes)
    await _upsert_outcomes(session, outcomes)
