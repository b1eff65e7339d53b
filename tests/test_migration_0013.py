"""Migration 0013 on SQLite and PostgreSQL: daily_live_deals starts with the deals already held
(live ones only, NULL keys as their stand-ins, amounts in exact hundredths), its triggers keep it
from then on, and the way back removes both."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Boolean, Numeric, column, insert, inspect, select, table, update

from app.db import UTCDateTime, create_engine
from app.migrate import downgrade, upgrade
from tests.test_migrations import FUNNELS, ONE_CONNECTION, T0

STAGES = table("stages", *map(column, ("id", "funnel_id", "code", "name", "sort", "semantics")))
DEALS = table(
    "deals",
    *map(column, ("id", "connection_id", "crm_deal_id", "crm_pipeline_id", "crm_stage_id", "title")),
    *map(column, ("funnel_id", "stage_id", "loss_reason", "currency")),
    column("managed", Boolean()),
    column("fields", JSON()),
    column("amount", Numeric(18, 2)),
    column("stage_entered_at", UTCDateTime()),
    column("deleted_at", UTCDateTime()),
    column("crm_updated_at", UTCDateTime()),
    column("created_at", UTCDateTime()),
    column("updated_at", UTCDateTime()),
)
LIVE = table(
    "daily_live_deals",
    *map(column, ("funnel_id", "stage_id", "day", "loss_reason", "currency", "deals", "amount_hundredths")),
)
LATE = T0 + timedelta(hours=16)  # 9:00 + 16 h: the next UTC day
# deal id -> (funnel, stage, entered, loss reason, amount, currency, deleted)
HELD: dict[int, tuple[int | None, int | None, Any, str | None, str | None, str | None, bool]] = {
    1: (1, 1, T0, None, "100.10", "RUB", False),
    2: (1, 1, T0 + timedelta(minutes=5), None, "0.20", "RUB", False),  # same row as deal 1
    3: (1, 2, LATE, "price", "99999999.99", "RUB", False),
    4: (1, 2, LATE, "price", None, "RUB", False),
    5: (1, 2, LATE, None, "1.00", None, False),
    6: (1, None, T0, None, "5.55", "USD", False),  # a CRM stage the funnel does not map
    7: (1, 1, None, None, "7.00", "RUB", False),  # no entry time
    8: (1, 1, T0, None, "8.00", "RUB", True),  # deleted: not counted
    9: (None, None, T0, None, "9.00", "RUB", False),  # in no funnel: not counted
    10: (1, 1, T0, None, "3.00", "USD", False),  # deal 1's row but for the currency
}
EXPECTED = {
    (1, 1, date(2026, 5, 1), "", "RUB"): (2, 10030),
    (1, 1, date(2026, 5, 1), "", "USD"): (1, 300),
    (1, 2, date(2026, 5, 2), "price", "RUB"): (2, 9999999999),
    (1, 2, date(2026, 5, 2), "", ""): (1, 100),
    (1, 0, date(2026, 5, 1), "", "USD"): (1, 555),
    (1, 1, date(1, 1, 1), "", "RUB"): (1, 700),
}


async def _seed(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(ONE_CONNECTION)
            await connection.execute(
                insert(FUNNELS).values(
                    id=1, connection_id=1, template_key="k", name="f", crm_pipeline_id="1",
                    created_pipeline=False, created_at=T0,
                )
            )  # fmt: skip
            for stage, semantics in ((1, "process"), (2, "failure")):
                await connection.execute(
                    insert(STAGES).values(
                        id=stage, funnel_id=1, code=f"S{stage}", name="s", sort=stage, semantics=semantics
                    )
                )
            for deal, (funnel, stage, entered, reason, amount, currency, deleted) in HELD.items():
                await connection.execute(
                    insert(DEALS).values(
                        id=deal, connection_id=1, crm_deal_id=str(deal), crm_pipeline_id="1", crm_stage_id="X",
                        title="", funnel_id=funnel, stage_id=stage, loss_reason=reason, currency=currency, managed=True,
                        fields={},
                        amount=None if amount is None else Decimal(amount), stage_entered_at=entered,
                        deleted_at=T0 if deleted else None, crm_updated_at=T0, created_at=T0, updated_at=T0,
                    )
                )  # fmt: skip
    finally:
        await engine.dispose()


async def _rows(url: str) -> dict[tuple[int, int, date, str, str], tuple[int, int]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(LIVE))
            return {
                (
                    funnel,
                    stage,
                    day if isinstance(day, date) else date.fromisoformat(day),
                    reason,
                    currency,
                ): (
                    n,
                    int(h),
                )
                for funnel, stage, day, reason, currency, n, h in rows
                if n
            }
    finally:
        await engine.dispose()


async def _delete_deal_3_and_restore_deal_8(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(update(DEALS).where(DEALS.c.id == 3).values(deleted_at=T0))
            await connection.execute(update(DEALS).where(DEALS.c.id == 8).values(deleted_at=None))
    finally:
        await engine.dispose()


async def _set_amount(url: str, deal: int, amount: Decimal) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(update(DEALS).where(DEALS.c.id == deal).values(amount=amount))
    finally:
        await engine.dispose()


def _tables(url: str) -> set[str]:
    async def read() -> set[str]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_0013_counts_the_deals_held_and_keeps_them_counted(empty_database_url: str) -> None:
    upgrade(empty_database_url, "0012")
    asyncio.run(_seed(empty_database_url))
    upgrade(empty_database_url, "0013")
    assert asyncio.run(_rows(empty_database_url)) == EXPECTED

    # The triggers from here on: a deal deleted, another restored.
    asyncio.run(_delete_deal_3_and_restore_deal_8(empty_database_url))
    after = dict(EXPECTED)
    after[(1, 2, date(2026, 5, 2), "price", "RUB")] = (1, 0)
    after[(1, 1, date(2026, 5, 1), "", "RUB")] = (3, 10830)
    assert asyncio.run(_rows(empty_database_url)) == after

    downgrade(empty_database_url, "0012")
    assert "daily_live_deals" not in _tables(empty_database_url)
    # No trigger left behind to write into the table that is gone; the way up again counts afresh.
    asyncio.run(_set_amount(empty_database_url, 1, Decimal("200.10")))
    upgrade(empty_database_url)
    after[(1, 1, date(2026, 5, 1), "", "RUB")] = (3, 20830)
    assert asyncio.run(_rows(empty_database_url)) == after
