"""Migration 0014 on SQLite and PostgreSQL: the monthly sums start as the daily rows already held
summed per calendar month, the triggers keep them from then on, and the way back removes both."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import date
from typing import Any

from sqlalchemy import column, insert, select, table, update

from app.db import create_engine
from app.migrate import downgrade, upgrade
from tests.test_migration_0013 import _tables
from tests.test_migrations import FUNNELS, ONE_CONNECTION, T0

STAGES = table("stages", *map(column, ("id", "funnel_id", "code", "name", "sort", "semantics")))
ENTRIES = table("daily_stage_entries", *map(column, ("stage_id", "day", "entries")))
EXITS = table("daily_stage_exits", *map(column, ("from_stage_id", "day", "to_stage_id", "exits")))
DURATIONS = table(
    "daily_stage_durations", *map(column, ("from_stage_id", "bucket", "day", "exits", "durations"))
)
MONTHLY_ENTRIES = table("monthly_stage_entries", *map(column, ("stage_id", "month", "entries")))
MONTHLY_EXITS = table("monthly_stage_exits", *map(column, ("from_stage_id", "month", "to_stage_id", "exits")))
MONTHLY_DURATIONS = table(
    "monthly_stage_durations", *map(column, ("from_stage_id", "bucket", "month", "exits"))
)


async def _run(url: str, statements: Iterable[Any]) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(statement)
    finally:
        await engine.dispose()


async def _rows(url: str, monthly: Any) -> set[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(monthly))
            return {tuple(date.fromisoformat(v) if isinstance(v, str) else v for v in row) for row in rows}
    finally:
        await engine.dispose()


def _seed() -> list[Any]:
    stages = [
        insert(STAGES).values(id=s, funnel_id=1, code=f"S{s}", name="s", sort=s, semantics="process")
        for s in (1, 2)
    ]
    days = [date(2026, 1, 31), date(2026, 2, 1), date(2026, 2, 28), date(2026, 3, 1)]
    return [
        ONE_CONNECTION,
        insert(FUNNELS).values(
            id=1,
            connection_id=1,
            template_key="k",
            name="f",
            crm_pipeline_id="1",
            created_pipeline=False,
            created_at=T0,
        ),
        *stages,
        *(insert(ENTRIES).values(stage_id=1, day=d, entries=i + 1) for i, d in enumerate(days)),
        *(
            insert(EXITS).values(from_stage_id=1, day=d, to_stage_id=2, exits=10 * (i + 1))
            for i, d in enumerate(days)
        ),
        insert(EXITS).values(from_stage_id=1, day=days[1], to_stage_id=0, exits=7),  # an unmapped target
        *(
            insert(DURATIONS).values(from_stage_id=2, bucket=b, day=d, exits=100, durations="")
            for d in days
            for b in (-3, 80)
        ),
    ]


def test_0014_sums_the_days_held_per_month_and_keeps_them_summed(empty_database_url: str) -> None:
    upgrade(empty_database_url, "0013")
    asyncio.run(_run(empty_database_url, _seed()))
    upgrade(empty_database_url, "0014")
    jan, feb, mar = date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)
    assert asyncio.run(_rows(empty_database_url, MONTHLY_ENTRIES)) == {(1, jan, 1), (1, feb, 5), (1, mar, 4)}
    assert asyncio.run(_rows(empty_database_url, MONTHLY_EXITS)) == {
        (1, jan, 2, 10),
        (1, feb, 2, 50),
        (1, feb, 0, 7),
        (1, mar, 2, 40),
    }
    durations = {(2, b, m, n) for b in (-3, 80) for m, n in ((jan, 100), (feb, 200), (mar, 100))}
    assert asyncio.run(_rows(empty_database_url, MONTHLY_DURATIONS)) == durations

    # From here on the triggers: an upsert-like UPDATE, a new day, a deleted day.
    asyncio.run(
        _run(
            empty_database_url,
            [
                update(ENTRIES)
                .where(ENTRIES.c.day == date(2026, 2, 1))
                .values(entries=ENTRIES.c.entries + 3),
                insert(ENTRIES).values(stage_id=2, day=date(2026, 3, 15), entries=9),
                ENTRIES.delete().where(ENTRIES.c.day == date(2026, 1, 31)),
            ],
        )
    )
    assert asyncio.run(_rows(empty_database_url, MONTHLY_ENTRIES)) == {
        (1, jan, 0),
        (1, feb, 8),
        (1, mar, 4),
        (2, mar, 9),
    }

    downgrade(empty_database_url, "0013")
    assert not {"monthly_stage_entries", "monthly_stage_exits", "monthly_stage_durations"} & _tables(
        empty_database_url
    )
    # No trigger left behind: the daily tables take writes without their months.
    asyncio.run(
        _run(empty_database_url, [insert(ENTRIES).values(stage_id=2, day=date(2026, 4, 2), entries=1)])
    )
    upgrade(empty_database_url)
    assert (2, date(2026, 4, 1), 1) in asyncio.run(_rows(empty_database_url, MONTHLY_ENTRIES))
