"""The mirror applies snapshots once, in order, never back in time, on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.deals import mirror as deal_mirror
from app.deals.mirror import MirrorResult, load_stage_index, mirror_snapshots, tombstone
from app.deals.models import Deal, StageTransition
from connectors.base import DealSnapshot
from tests.support.db import add_funnel, open_sessions

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with open_sessions(database_url) as factory:
        async with factory.begin() as session:
            stages = [(code, "process") for code in ("NEW", "QUALIFIED", "WON")]
            await add_funnel(session, stages, template_key="general.typical", name="T")
        yield factory


def snap(deal_id: str, stage: str, minutes: int, pipeline: str = "5", **extra: object) -> DealSnapshot:
    return DealSnapshot(
        id=deal_id,
        pipeline_id=pipeline,
        stage_id=stage,
        title=f"Deal {deal_id}",
        updated_at=T0 + timedelta(minutes=minutes),
        amount=Decimal("100"),
        **extra,  # type: ignore[arg-type]
    )


async def mirror(
    factory: async_sessionmaker[AsyncSession], *snapshots: DealSnapshot, source: str = "webhook"
) -> None:
    async with factory.begin() as session:
        index = await load_stage_index(session, 1)
        await mirror_snapshots(session, 1, list(snapshots), index, source)


async def history(
    factory: async_sessionmaker[AsyncSession], crm_id: str
) -> list[tuple[str | None, str, str]]:
    async with factory() as session:
        deal = await session.scalar(select(Deal).where(Deal.crm_deal_id == crm_id))
        assert deal is not None
        rows = await session.scalars(
            select(StageTransition).where(StageTransition.deal_id == deal.id).order_by(StageTransition.id)
        )
        return [(t.from_crm_stage_id, t.to_crm_stage_id, t.source) for t in rows]


async def get_deal(factory: async_sessionmaker[AsyncSession], crm_id: str) -> Deal:
    async with factory() as session:
        deal = await session.scalar(select(Deal).where(Deal.crm_deal_id == crm_id))
        assert deal is not None
        return deal


async def test_new_deal_then_move_records_history(sessions: async_sessionmaker[AsyncSession]) -> None:
    await mirror(sessions, snap("1", "C5:NEW", 0))
    await mirror(sessions, snap("1", "C5:QUALIFIED", 5), source="reconcile")
    deal = await get_deal(sessions, "1")
    assert deal.crm_stage_id == "C5:QUALIFIED" and deal.managed and deal.stage_id is not None
    assert deal.stage_entered_at == T0 + timedelta(minutes=5)
    assert await history(sessions, "1") == [
        (None, "C5:NEW", "webhook"),
        ("C5:NEW", "C5:QUALIFIED", "reconcile"),
    ]


async def test_duplicates_change_nothing(sessions: async_sessionmaker[AsyncSession]) -> None:
    await mirror(sessions, snap("1", "C5:NEW", 0), snap("1", "C5:QUALIFIED", 5))
    await mirror(sessions, snap("1", "C5:QUALIFIED", 5))
    await mirror(sessions, snap("1", "C5:QUALIFIED", 5))
    assert len(await history(sessions, "1")) == 2


async def test_an_older_snapshot_never_moves_a_deal_back(sessions: async_sessionmaker[AsyncSession]) -> None:
    await mirror(sessions, snap("1", "C5:WON", 10))
    await mirror(sessions, snap("1", "C5:QUALIFIED", 5))
    assert (await get_deal(sessions, "1")).crm_stage_id == "C5:WON"
    assert await history(sessions, "1") == [(None, "C5:WON", "webhook")]


async def test_out_of_order_batch_is_applied_in_modify_time_order(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await mirror(sessions, snap("1", "C5:WON", 10), snap("1", "C5:NEW", 0), snap("1", "C5:QUALIFIED", 5))
    assert [h[1] for h in await history(sessions, "1")] == ["C5:NEW", "C5:QUALIFIED", "C5:WON"]


async def test_deals_elsewhere_are_unmanaged_and_unknown_stages_kept(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await mirror(sessions, snap("2", "C9:NEW", 0, pipeline="9"), snap("3", "C5:UC_HAND", 0))
    other = await get_deal(sessions, "2")
    assert not other.managed and other.funnel_id is None and other.crm_stage_id == "C9:NEW"
    hand = await get_deal(sessions, "3")
    assert hand.managed and hand.stage_id is None and hand.crm_stage_id == "C5:UC_HAND"


async def test_tombstone_and_restore(sessions: async_sessionmaker[AsyncSession]) -> None:
    await mirror(sessions, snap("1", "C5:NEW", 0))
    async with sessions.begin() as session:
        assert await tombstone(session, 1, ["1", "404"], T0 + timedelta(minutes=1)) == 1
    assert (await get_deal(sessions, "1")).deleted_at is not None
    await mirror(sessions, snap("1", "C5:NEW", 2))
    assert (await get_deal(sessions, "1")).deleted_at is None


async def entered_history(
    factory: async_sessionmaker[AsyncSession], crm_id: str
) -> list[tuple[str, datetime | None, datetime]]:
    """(to stage, from_stage_entered_at, at) of a deal's transitions, oldest first."""
    async with factory() as session:
        deal = await session.scalar(select(Deal).where(Deal.crm_deal_id == crm_id))
        assert deal is not None
        rows = await session.scalars(
            select(StageTransition).where(StageTransition.deal_id == deal.id).order_by(StageTransition.id)
        )
        return [(t.to_crm_stage_id, t.from_stage_entered_at, t.at) for t in rows]


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def test_transitions_record_when_the_left_stage_was_entered(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await mirror(sessions, snap("1", "C5:NEW", 0))
    # Same stage, other content: no transition, and the deal is still in NEW since minute 0.
    await mirror(sessions, snap("1", "C5:NEW", 3, responsible_id="7"))
    await mirror(sessions, snap("1", "C5:QUALIFIED", 5))
    await mirror(sessions, snap("1", "C5:NEW", 8), source="reconcile")  # back again
    assert await entered_history(sessions, "1") == [
        ("C5:NEW", None, at(0)),  # creation: no stage was left
        ("C5:QUALIFIED", at(0), at(5)),
        ("C5:NEW", at(5), at(8)),
    ]
    assert (await get_deal(sessions, "1")).stage_entered_at == at(8)


async def test_entered_at_within_one_batch_and_across_pipelines(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Created and moved twice in one batch (delivered out of order): each move sees the previous one.
    await mirror(sessions, snap("2", "C5:WON", 9), snap("2", "C5:NEW", 1), snap("2", "C5:QUALIFIED", 4))
    assert await entered_history(sessions, "2") == [
        ("C5:NEW", None, at(1)),
        ("C5:QUALIFIED", at(1), at(4)),
        ("C5:WON", at(4), at(9)),
    ]
    # Into a pipeline FunnelSync does not manage and back: the time carries over unmanaged stages.
    await mirror(sessions, snap("2", "C9:NEW", 20, pipeline="9"))
    await mirror(sessions, snap("2", "C5:NEW", 30))
    assert (await entered_history(sessions, "2"))[-2:] == [
        ("C9:NEW", at(9), at(20)),
        ("C5:NEW", at(20), at(30)),
    ]
    # A duplicate or stale delivery records nothing.
    await mirror(sessions, snap("2", "C5:NEW", 30), snap("2", "C5:WON", 25))
    assert len(await entered_history(sessions, "2")) == 5


async def mirror_while_another_inserts(
    sessions: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
    first: DealSnapshot,
    second: DealSnapshot,
) -> tuple[MirrorResult, MirrorResult]:
    """The inbox processor and the reconcile race for one new deal: the second session reads the
    deals it holds (finding none) and only then does the first one insert the deal and commit. Done
    by running the first mirror inside the second's read, so the interleaving is exact."""
    read_deals = deal_mirror._existing
    racing: list[AsyncSession] = []
    outcome: list[MirrorResult] = []

    async def read_then_let_the_other_commit(
        session: AsyncSession, connection_id: int, crm_ids: Sequence[str]
    ) -> dict[str, Deal]:
        found = await read_deals(session, connection_id, crm_ids)
        if session is racing[0] and not outcome:  # its first read: the other runs to its commit now
            async with sessions.begin() as other:
                index = await load_stage_index(other, 1)
                outcome.append(await mirror_snapshots(other, 1, [first], index, "webhook"))
        return found

    monkeypatch.setattr(deal_mirror, "_existing", read_then_let_the_other_commit)
    async with sessions.begin() as session:
        racing.append(session)
        index = await load_stage_index(session, 1)
        late = await mirror_snapshots(session, 1, [second], index, "reconcile")
    assert outcome, "the interleaving did not happen"
    return outcome[0], late


async def test_two_sessions_inserting_one_new_deal_both_commit(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    early, late = await mirror_while_another_inserts(
        sessions, monkeypatch, snap("7", "C5:NEW", 0), snap("7", "C5:NEW", 0)
    )
    assert (early.created, late.created, late.unchanged) == (1, 0, 1)
    async with sessions() as session:
        assert len(list(await session.scalars(select(Deal.id)))) == 1
    assert await history(sessions, "7") == [(None, "C5:NEW", "webhook")]  # one creation, no more


async def test_a_newer_snapshot_of_a_deal_another_session_inserted_is_an_update(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    early, late = await mirror_while_another_inserts(
        sessions, monkeypatch, snap("7", "C5:NEW", 0), snap("7", "C5:QUALIFIED", 5)
    )
    assert (early.created, late.created, late.updated) == (1, 0, 1)
    assert [t.to_crm_stage_id for _, t in late.entered] == ["C5:QUALIFIED"]  # the rules see the move
    assert await entered_history(sessions, "7") == [("C5:NEW", None, at(0)), ("C5:QUALIFIED", at(0), at(5))]
    assert (await get_deal(sessions, "7")).crm_stage_id == "C5:QUALIFIED"
