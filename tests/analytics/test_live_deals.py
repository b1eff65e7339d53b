"""The live-deal counts the triggers on `deals` keep (migration 0013, app.analytics.live_deals) equal a
count over the deals themselves after every kind of write, on both databases: the mirror's inserts,
moves, amount and loss-reason changes, tombstones and restores; the loss-reason re-derivation's bulk
UPDATE; a deleted stage's and a deleted funnel's ON DELETE SET NULL; a deleted connection's ON DELETE
CASCADE. The page's stage totals and loss reasons read from them equal the same numbers counted over
the deals, for periods with and without partial days.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.analytics.live_deals import lost_by_reason, stage_currency_totals, stage_totals
from app.analytics.models import NO_CURRENCY, NO_DAY, NO_REASON, NO_STAGE, DailyLiveDeals
from app.analytics.schemas import Period
from app.connections.models import Connection
from app.deals.loss_reasons import refresh_loss_reasons
from app.deals.mirror import load_stage_index, mirror_snapshots, tombstone
from app.deals.models import Deal
from app.funnels.models import Funnel, FunnelMapping, FunnelStage
from connectors.base import DealSnapshot
from funnel_templates.schema import LOSS_REASON_FIELD
from tests.support.db import add_funnel, open_sessions

T0 = datetime(2026, 3, 1, tzinfo=UTC)
STAGES = [("A", "process"), ("B", "process"), ("WON", "success"), ("LOST", "failure"), ("SPAM", "failure")]
CODES = [code for code, _ in STAGES]
REASONS = [None, "price", "competitor", "no_answer"]
PERIODS = [
    Period(start=T0, end=T0 + timedelta(days=20)),  # whole days only
    Period(start=T0 + timedelta(days=2, hours=5), end=T0 + timedelta(days=9, hours=13)),  # two edges
    Period(start=T0 + timedelta(days=3, hours=1), end=T0 + timedelta(days=3, hours=22)),  # inside a day
    Period(start=T0 + timedelta(days=1, hours=18), end=T0 + timedelta(days=6, hours=5)),  # short edges
    Period(start=T0 - timedelta(days=30), end=T0 + timedelta(days=4)),  # before everything
]


def _snapshot(deal: int, code: str, at: datetime, rng: random.Random, pipeline: str = "5") -> DealSnapshot:
    """Amounts with kopecks (0.10 + 0.20 is not 0.30 in binary floating point), some without."""
    amount = None if deal % 6 == 0 else Decimal(rng.randrange(0, 10_000_000)) / 100
    reason = rng.choice(REASONS) if code in ("LOST", "SPAM") else None
    currency = rng.choice([None, "RUB", "RUB", "USD"])
    return DealSnapshot(
        id=str(deal),
        pipeline_id=pipeline,
        stage_id=f"C{pipeline}:{code}",
        title=str(deal),
        updated_at=at,
        amount=amount,
        currency=currency,
        fields={LOSS_REASON_FIELD: reason} if reason else {},
    )


async def _mirror(
    sessions: async_sessionmaker[AsyncSession], connection_id: int, snapshots: list[DealSnapshot]
) -> None:
    async with sessions.begin() as session:
        index = await load_stage_index(session, connection_id)
        await mirror_snapshots(session, connection_id, snapshots, index, "webhook")


async def _seed(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    """Two connections with a funnel each, 120 deals walking the stages; returns the first
    funnel's id and the second connection's."""
    rng = random.Random(13)
    async with sessions.begin() as session:
        first, funnel = await add_funnel(session, STAGES, template_key="hand.live", name="Live")
        second = Connection(name="second", crm="bitrix24", base_url="http://y/", credentials_encrypted="y")
        session.add(second)
        await session.flush()
        other = Funnel(connection_id=second.id, template_key="hand.other", name="Other", crm_pipeline_id="7")
        session.add(other)
        await session.flush()
        for sort, (code, semantics) in enumerate(STAGES):
            stage = FunnelStage(funnel_id=other.id, code=code, name=code, sort=sort, semantics=semantics)
            stage.crm_stage_id = f"C7:{code}"
            session.add(stage)
    for number in range(1, 121):
        at = T0 + timedelta(seconds=rng.randrange(0, 12 * 86_400))
        moves = [_snapshot(number, "A", at, rng)]
        for _ in range(rng.randrange(0, 5)):
            at += timedelta(seconds=rng.randrange(30, 3 * 86_400))
            moves.append(_snapshot(number, rng.choice(CODES), at, rng))
        if number % 10 == 0:  # to a CRM stage the funnel does not map
            moves.append(replace_stage(moves[-1], "C5:ZZZ", at + timedelta(hours=1)))
        for snapshot in moves:
            await _mirror(sessions, first.id, [snapshot])
        await _mirror(sessions, second.id, [_snapshot(number, rng.choice(CODES), at, rng, pipeline="7")])
    async with sessions.begin() as session:
        await tombstone(session, first.id, [str(n) for n in range(7, 121, 7)], T0 + timedelta(days=40))
    # A restored deal: a newer snapshot after its tombstone.
    await _mirror(sessions, first.id, [_snapshot(14, "LOST", T0 + timedelta(days=41), rng)])
    return funnel.id, second.id


def replace_stage(snapshot: DealSnapshot, stage_id: str, at: datetime) -> DealSnapshot:
    return DealSnapshot(
        id=snapshot.id,
        pipeline_id=snapshot.pipeline_id,
        stage_id=stage_id,
        title=snapshot.title,
        updated_at=at,
    )


Key = tuple[int, int, date, str, str]  # funnel, stage, day entered, loss reason, currency


async def _kept(session: AsyncSession) -> dict[Key, tuple[int, int]]:
    """The rows the triggers kept, but those at zero (of deals that all left)."""
    x = DailyLiveDeals
    rows = await session.execute(
        select(x.funnel_id, x.stage_id, x.day, x.loss_reason, x.currency, x.deals, x.amount_hundredths)
    )
    kept: dict[Key, tuple[int, int]] = {}
    for funnel_id, stage_id, day, reason, currency, deals, hundredths in rows:
        key = (funnel_id, stage_id, day, reason, currency)
        assert deals >= 0, key
        if deals:
            kept[key] = (deals, hundredths)
        else:
            assert hundredths == 0, key
    return kept


async def _counted(session: AsyncSession) -> dict[Key, tuple[int, int]]:
    """The same rows, counted over the deals in Python."""
    counted: dict[Key, tuple[int, int]] = {}
    rows = await session.execute(
        select(
            Deal.funnel_id, Deal.stage_id, Deal.stage_entered_at, Deal.loss_reason, Deal.currency, Deal.amount
        ).where(Deal.funnel_id.is_not(None), Deal.deleted_at.is_(None))
    )
    for funnel_id, stage_id, entered, reason, currency, amount in rows:
        key = (
            funnel_id,
            NO_STAGE if stage_id is None else stage_id,
            NO_DAY if entered is None else entered.astimezone(UTC).date(),
            NO_REASON if reason is None else reason,
            NO_CURRENCY if currency is None else currency,
        )
        deals, hundredths = counted.get(key, (0, 0))
        counted[key] = (deals + 1, hundredths + (0 if amount is None else int(Decimal(amount) * 100)))
    return counted


async def _assert_kept_equals_counted(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        kept, counted = await _kept(session), await _counted(session)
    assert kept == counted
    assert kept  # not vacuous


async def _assert_page_numbers(sessions: async_sessionmaker[AsyncSession], funnel_id: int) -> None:
    async with sessions() as session:
        stages = (await session.scalars(select(FunnelStage).where(FunnelStage.funnel_id == funnel_id))).all()
        failure_ids = [s.id for s in stages if s.semantics == "failure"]
        totals = await session.execute(
            select(Deal.stage_id, func.count(), func.sum(Deal.amount))
            .where(Deal.funnel_id == funnel_id, Deal.deleted_at.is_(None))
            .group_by(Deal.stage_id)
        )
        expected = {
            stage_id: (n, Decimal(total or 0).quantize(Decimal("0.01"))) for stage_id, n, total in totals
        }
        assert await stage_totals(session, funnel_id) == expected
        assert None in expected  # the unmapped stage's deals
        by_currency: dict[int | None, dict[str | None, tuple[int, Decimal]]] = {}
        for stage_id, currency, n, total in await session.execute(
            select(Deal.stage_id, Deal.currency, func.count(), func.sum(Deal.amount))
            .where(Deal.funnel_id == funnel_id, Deal.deleted_at.is_(None))
            .group_by(Deal.stage_id, Deal.currency)
        ):
            by_currency.setdefault(stage_id, {})[currency] = (
                n,
                Decimal(total or 0).quantize(Decimal("0.01")),
            )
        assert await stage_currency_totals(session, funnel_id) == by_currency
        assert {None, "RUB", "USD"} <= {c for currencies in by_currency.values() for c in currencies}
        lost_somewhere = 0
        for period in PERIODS:
            lost = await session.execute(
                select(Deal.loss_reason, func.count())
                .where(
                    Deal.funnel_id == funnel_id,
                    Deal.stage_id.in_(failure_ids),
                    Deal.deleted_at.is_(None),
                    Deal.stage_entered_at >= period.start,
                    Deal.stage_entered_at < period.end,
                )
                .group_by(Deal.loss_reason)
            )
            by_reason = dict(await lost_by_reason(session, funnel_id, failure_ids, period))
            assert by_reason == {reason: n for reason, n in lost}, period
            lost_somewhere += len(by_reason)
        assert lost_somewhere > len(PERIODS)  # several reasons in most periods


async def test_the_kept_counts_follow_every_write_and_give_the_page_numbers(database_url: str) -> None:
    async with open_sessions(database_url) as sessions:
        funnel_id, second_connection_id = await _seed(sessions)
        await _assert_kept_equals_counted(sessions)
        await _assert_page_numbers(sessions, funnel_id)

        # The loss-reason field mapped under a CRM id: the bulk UPDATE re-derives the column.
        async with sessions.begin() as session:
            session.add(
                FunnelMapping(funnel_id=funnel_id, kind="field", code=LOSS_REASON_FIELD, crm_id="UF_REASON")
            )
            await session.execute(
                update(Deal)
                .where(Deal.funnel_id == funnel_id, Deal.id % 3 == 0)
                .values(fields={"UF_REASON": "budget"})
            )
            assert await refresh_loss_reasons(session, funnel_id) > 0
        await _assert_kept_equals_counted(sessions)
        await _assert_page_numbers(sessions, funnel_id)

        # A deleted stage (its deals' stage_id set NULL), a deleted funnel (funnel_id set NULL),
        # a deleted connection (its deals deleted).
        async with sessions.begin() as session:
            await session.execute(
                delete(FunnelStage).where(FunnelStage.funnel_id == funnel_id, FunnelStage.code == "B")
            )
        async with sessions.begin() as session:
            other = await session.scalar(
                select(Funnel.id).where(Funnel.connection_id == second_connection_id)
            )
            await session.execute(delete(Funnel).where(Funnel.id == other))
            assert await session.scalar(select(func.count()).where(Deal.funnel_id == other)) == 0
        await _assert_kept_equals_counted(sessions)
        async with sessions.begin() as session:
            await session.execute(delete(Connection).where(Connection.id == second_connection_id))
        await _assert_kept_equals_counted(sessions)
        await _assert_page_numbers(sessions, funnel_id)
