"""Migration 0012 on SQLite and PostgreSQL: the exits' durations move from daily_stage_exits into
daily_stage_durations (per duration bucket) exactly as the mirror now keeps them, the exit counts
stay, and the way back restores 0011's rows; the partial index of deleted deals comes and goes."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import Boolean, column, insert, inspect, select, table

from app.analytics import daily_counts
from app.db import UTCDateTime, create_engine, session_factory
from app.migrate import downgrade, upgrade
from tests.test_migrations import CONNECTIONS, DEALS, T0

FUNNELS = table(
    "funnels", *map(column, ("id", "connection_id", "template_key", "name", "crm_pipeline_id")),
    column("created_pipeline", Boolean()), column("created_at", UTCDateTime()),
)  # fmt: skip
STAGES = table("stages", *map(column, ("id", "funnel_id", "code", "name", "sort", "semantics")))
TRANSITIONS = table(
    "stage_transitions",
    *map(column, ("id", "deal_id", "to_crm_stage_id", "source", "from_stage_id", "to_stage_id")),
    column("at", UTCDateTime()),
    column("created_at", UTCDateTime()),
    column("from_stage_entered_at", UTCDateTime()),
)
# (deal, [(stage or None: unmapped, minutes from T0)]): moves over several days, durations from
# seconds to weeks (many buckets), one clock out of step (a negative duration), an unmapped stage.
MOVES: list[tuple[int, list[tuple[int | None, float]]]] = [
    (1, [(1, 0), (2, 0.5), (3, 90), (4, 3000)]),
    (2, [(1, 10), (2, 11), (3, 12), (1, 20_000)]),
    (3, [(1, 30), (None, 5000), (2, 5200)]),
    (4, [(1, 2000), (2, 1999.5), (4, 2100)]),  # moved "before" it entered: CRM clocks disagree
    (5, [(1, 2000), (2, 2000 + 1440 * 3), (3, 2000 + 1440 * 3 + 7)]),
    (40, [(2, 100), (3, 1500), (None, 1600)]),  # ends in an unmapped stage: no outcome
    *((deal, [(1, deal * 37.0), (2, deal * 37.0 + deal**2), (3, deal * 50.0 + deal**3 / 7)]) for deal in range(6, 40)),
]  # fmt: skip


async def _seed(url: str) -> None:
    """At 0007, before the daily counts: 0008 then counts these transitions into its rows."""
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(CONNECTIONS).values(
                    id=1, name="c", crm="bitrix24", base_url="http://x/", credentials_encrypted="x",
                    settings={}, status="active", created_at=T0, updated_at=T0,
                )
            )  # fmt: skip
            await connection.execute(
                insert(FUNNELS).values(
                    id=1, connection_id=1, template_key="k", name="f", crm_pipeline_id="5",
                    created_pipeline=False, created_at=T0,
                )
            )  # fmt: skip
            for stage in (1, 2, 3, 4):
                await connection.execute(
                    insert(STAGES).values(id=stage, funnel_id=1, code=f"S{stage}", name="", sort=stage, semantics="process")
                )  # fmt: skip
            transition = 0
            for deal, moves in MOVES:
                await connection.execute(
                    insert(DEALS).values(
                        id=deal, connection_id=1, crm_deal_id=str(deal), crm_pipeline_id="5", crm_stage_id="x",
                        title="", managed=True, fields={}, crm_updated_at=T0, created_at=T0, updated_at=T0,
                    )
                )  # fmt: skip
                previous: tuple[int | None, Any] = (None, None)
                for stage, minutes in moves:
                    at = T0 + timedelta(minutes=minutes)
                    transition += 1
                    await connection.execute(
                        insert(TRANSITIONS).values(
                            id=transition, deal_id=deal, to_crm_stage_id="x", source="webhook",
                            from_stage_id=previous[0], to_stage_id=stage, at=at, created_at=T0,
                            from_stage_entered_at=previous[1],
                        )
                    )  # fmt: skip
                    previous = (stage, at)
    finally:
        await engine.dispose()


async def _rows(url: str, name: str, *columns: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(*map(column, columns)).select_from(table(name)).order_by(*map(column, columns))
            )
            return [tuple(row) for row in rows]
    finally:
        await engine.dispose()


async def _kept(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    return (
        await _rows(url, "daily_stage_durations", "from_stage_id", "bucket", "day", "exits", "durations"),
        await _rows(url, "daily_outcome_entries", "outcome_stage_id", "day", "stage_id", "entries"),
    )


async def _rebuilt(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What the application's own count (app.analytics.daily_counts.rebuild) writes."""
    engine = create_engine(url)
    try:
        async with session_factory(engine).begin() as session:
            await daily_counts.rebuild(session)
    finally:
        await engine.dispose()
    return await _kept(url)


def _indexes(url: str) -> set[str]:
    async def run() -> set[str]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                found = await connection.run_sync(lambda sync: inspect(sync).get_indexes("deals"))
                return {index["name"] for index in found if index["name"]}
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_0012_moves_the_durations_into_buckets_and_back(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade(url, "0007")
    asyncio.run(_seed(url))
    upgrade(url, "0011")
    before = asyncio.run(
        _rows(url, "daily_stage_exits", "from_stage_id", "day", "to_stage_id", "exits", "durations")
    )
    assert len(before) > 5 and "ix_deals_funnel_deleted" not in _indexes(url)

    upgrade(url, "0012")
    assert "ix_deals_funnel_deleted" in _indexes(url)
    exits = asyncio.run(_rows(url, "daily_stage_exits", "from_stage_id", "day", "to_stage_id", "exits"))
    assert exits == [row[:4] for row in before]  # the counts stay
    moved = asyncio.run(
        _rows(url, "daily_stage_durations", "from_stage_id", "bucket", "day", "exits", "durations")
    )
    # Every stage and day has the same durations as before, now split by bucket.
    per_day: dict[tuple[int, Any], Counter[float]] = {}
    for stage, day, _, _, text in before:
        per_day.setdefault((stage, day), Counter()).update(daily_counts.decode_durations(text))
    split: dict[tuple[int, Any], Counter[float]] = {}
    for stage, bucket, day, n, text in moved:
        values = list(daily_counts.decode_durations(text))
        assert len(values) == n and {daily_counts.duration_bucket(int(v)) for v in values} == {bucket}
        split.setdefault((stage, day), Counter()).update(values)
    assert split == per_day
    assert any(bucket < 0 for _, bucket, *_ in moved)  # the negative duration is there
    assert len({bucket for _, bucket, *_ in moved}) > 8  # not vacuous: many buckets
    outcomes = asyncio.run(_kept(url))[1]
    # Deal 2 went back to stage 1: its four entries count under outcome 1; deal 40 has no outcome.
    assert sum((Counter({s: n}) for o, _, s, n in outcomes if o == 1), Counter()) == {1: 2, 2: 1, 3: 1}
    assert sum(n for *_, n in outcomes) == sum(len(m) for deal, m in MOVES if deal != 40) - 1
    # And exactly what the application writes for the same transitions.
    assert asyncio.run(_rebuilt(url)) == (moved, outcomes)

    downgrade(url, "0011")
    assert "ix_deals_funnel_deleted" not in _indexes(url)
    after = asyncio.run(
        _rows(url, "daily_stage_exits", "from_stage_id", "day", "to_stage_id", "exits", "durations")
    )
    assert after == before
