"""Group commit (app.webhooks.group_commit): concurrent deliveries share one transaction, each is
answered only after that transaction committed, and a failed group acknowledges nothing. Real
database, both backends."""

from __future__ import annotations

import asyncio

from sqlalchemy import event, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from app.connections.models import Connection
from app.webhooks.group_commit import Delivery, GroupCommitter
from app.webhooks.models import EventStatus, InboxEvent
from tests.support.db import open_sessions


async def _connection_id(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions.begin() as session:
        record = Connection(name="b24", crm="bitrix24", base_url="http://x/", credentials_encrypted="x")
        session.add(record)
        await session.flush()
        return record.id


async def _stored(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        return list(await session.scalars(select(InboxEvent.dedupe_key).order_by(InboxEvent.id)))


def _deliveries(connection_id: int, keys: list[str]) -> list[Delivery]:
    return [Delivery(connection_id, key, b"body", "application/x-www-form-urlencoded") for key in keys]


async def test_concurrent_deliveries_commit_together(database_url: str) -> None:
    async with open_sessions(database_url) as sessions:
        connection_id = await _connection_id(sessions)
        committer = GroupCommitter(sessions)
        keys = [f"k{i}" for i in range(20)] + ["k3"]  # the last duplicates a pending one
        outcomes = await asyncio.gather(*(committer.store(d) for d in _deliveries(connection_id, keys)))
        assert outcomes == [True] * 20 + [False]
        # All 21 arrived before the first transaction began: one transaction took them all.
        assert committer.groups == 1
        assert await _stored(sessions) == keys[:20]
        # A later delivery starts its own transaction at once.
        assert await committer.store(_deliveries(connection_id, ["late"])[0]) is True
        assert committer.groups == 2


async def test_a_bad_delivery_fails_its_whole_group(database_url: str) -> None:
    """A row the database refuses (its connection does not exist) fails every delivery of the
    group, and none of the group's rows is committed; the next group is unaffected."""
    async with open_sessions(database_url) as sessions:
        connection_id = await _connection_id(sessions)
        committer = GroupCommitter(sessions)
        group = _deliveries(connection_id, ["a", "b"]) + _deliveries(connection_id + 1000, ["orphan"])
        outcomes = await asyncio.gather(*(committer.store(d) for d in group), return_exceptions=True)
        assert all(isinstance(o, Exception) for o in outcomes), outcomes
        assert await _stored(sessions) == []
        assert await committer.store(_deliveries(connection_id, ["c"])[0]) is True
        assert await _stored(sessions) == ["c"]


async def test_a_failed_commit_acknowledges_nothing(database_url: str) -> None:
    """The COMMIT itself fails (injected: the database cannot fake it on demand): every waiter gets
    the error, and the rows are not there."""
    async with open_sessions(database_url) as sessions:
        connection_id = await _connection_id(sessions)
        committer = GroupCommitter(sessions)
        failures = 0

        def fail_once(session: Session) -> None:
            nonlocal failures
            if failures == 0:
                failures += 1
                raise RuntimeError("injected commit failure")

        event.listen(Session, "before_commit", fail_once)
        try:
            group = _deliveries(connection_id, ["x", "y", "z"])
            outcomes = await asyncio.gather(*(committer.store(d) for d in group), return_exceptions=True)
        finally:
            event.remove(Session, "before_commit", fail_once)
        assert [str(o) for o in outcomes] == ["injected commit failure"] * 3
        async with sessions() as session:
            assert await session.scalar(select(func.count()).select_from(InboxEvent)) == 0
        # The CRM delivers again: now stored, as new.
        retried = await asyncio.gather(*(committer.store(d) for d in _deliveries(connection_id, ["x", "y"])))
        assert retried == [True, True]


async def test_a_cancelled_waiter_does_not_cancel_its_group(database_url: str) -> None:
    """A client hanging up (its request task cancelled) must not roll back the others' rows."""
    async with open_sessions(database_url) as sessions:
        connection_id = await _connection_id(sessions)
        committer = GroupCommitter(sessions)
        first, second = _deliveries(connection_id, ["p", "q"])
        hung_up = asyncio.ensure_future(committer.store(first))
        kept = asyncio.ensure_future(committer.store(second))
        await asyncio.sleep(0)  # one loop turn: both requests have queued their rows
        hung_up.cancel()
        assert await kept is True
        assert await _stored(sessions) == ["p", "q"]


async def test_a_group_decides_each_key_as_one_delivery_at_a_time_would(database_url: str) -> None:
    """One INSERT stores a group's new rows; a key already processed is stored again under a
    suffixed key (a new change in the same second), one pending is a duplicate, and a key twice in
    the group is new once: the answers store_event gives one delivery at a time."""
    async with open_sessions(database_url) as sessions:
        connection_id = await _connection_id(sessions)
        committer = GroupCommitter(sessions)
        assert await asyncio.gather(
            *(committer.store(d) for d in _deliveries(connection_id, ["done", "waiting"]))
        ) == [True, True]
        async with sessions.begin() as session:
            await session.execute(
                update(InboxEvent).where(InboxEvent.dedupe_key == "done").values(status=EventStatus.PROCESSED)
            )
        keys = ["done", "waiting", "new", "new", "done"]
        outcomes = await asyncio.gather(*(committer.store(d) for d in _deliveries(connection_id, keys)))
        assert outcomes == [True, False, True, False, True]
        stored = await _stored(sessions)
        assert stored[:3] == ["done", "waiting", "new"]
        # Both later "done" deliveries were stored under suffixed keys, each its own row.
        assert len(stored) == 5 and all(key.startswith("done#") for key in stored[3:])
