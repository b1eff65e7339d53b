"""Group commit of webhook deliveries: concurrent deliveries share one transaction.

A delivery is acknowledged only once its inbox row is committed. Committing each in its own
transaction costs a connection checkout, a BEGIN and a COMMIT per delivery (and on SQLite a turn at
the single write lock, shared with the inbox job); under a burst those dominate. Here the first
delivery to arrive starts a transaction at once; the deliveries that arrive while it runs wait and
go together in the next one, and so on, so an idle server adds no delay and a busy one commits many
deliveries per transaction.

Each delivery awaits the commit of its own group before it answers. If anything in a group fails
(a statement or the COMMIT), the whole transaction is rolled back and every delivery of the group
gets the error (the receiver answers 5xx and the CRM delivers again): nothing is acknowledged that is
not committed, and nothing of a failed group is committed.

A delivery checked against a kept connection row carries that row's stamp; the group's transaction
reads the current stamps first, and a delivery whose connection changed since is not stored but
handed back (StaleConnection) to be checked again: see app.webhooks.known_connections.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.webhooks.known_connections import ConnectionStamp, StaleConnection, current_stamps
from app.webhooks.service import IncomingEvent, store_events

# Deliveries per transaction at most: bounds how long the first of a group waits for the others'
# statements (each is one INSERT).
MAX_GROUP = 128


@dataclass
class Delivery(IncomingEvent):
    """One delivery's inbox row, the connection row it was checked against, and its answer."""

    # The connection row the delivery was checked against; None: no check at commit (tests, tools).
    stamp: ConnectionStamp | None = None
    stored: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommitter:
    """One per session factory (per database) and event loop: see `committer`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self.loop = asyncio.get_running_loop()
        self._waiting: list[Delivery] = []
        self._running: asyncio.Task[None] | None = None
        self.groups = 0  # transactions committed or failed, for tests and metrics

    async def store(self, delivery: Delivery) -> bool:
        """Commit the delivery's row (in a group); True when it was new, False for a duplicate of
        a pending one. Raises what failed its group, or StaleConnection (nothing stored) when its
        connection changed since it was checked."""
        self._waiting.append(delivery)
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._drain())
        # shield: a client that hangs up must not cancel the group's commit under the others.
        return await asyncio.shield(delivery.stored)

    async def _drain(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            await self._commit(group)

    async def _commit(self, group: list[Delivery]) -> None:
        self.groups += 1
        try:
            async with self._sessions.begin() as session:
                current = await current_stamps(session, (d.connection_id for d in group if d.stamp))
                valid = [delivery for delivery in group if _still_valid(delivery, current)]
                outcomes = dict(zip(map(id, valid), await store_events(session, valid), strict=True))
        except Exception as exc:  # every waiter learns why: nothing half-acknowledged
            for delivery in group:
                if not delivery.stored.done():
                    delivery.stored.set_exception(exc)
            return
        except BaseException:  # cancelled (shutdown): the group was rolled back
            for delivery in [*group, *self._waiting]:
                delivery.stored.cancel()
            raise
        for delivery in group:
            new = outcomes.get(id(delivery))  # None: not stored, its connection changed
            if delivery.stored.done():
                continue
            if new is None:
                delivery.stored.set_exception(StaleConnection())
            else:
                delivery.stored.set_result(new)


def _still_valid(delivery: Delivery, current: dict[int, ConnectionStamp]) -> bool:
    return delivery.stamp is None or current.get(delivery.connection_id) == delivery.stamp


_committers: WeakKeyDictionary[async_sessionmaker[AsyncSession], GroupCommitter] = WeakKeyDictionary()


def committer(sessions: async_sessionmaker[AsyncSession]) -> GroupCommitter:
    """The group committer of this session factory (created on first use). Futures belong to one
    event loop, so a factory used from a new loop (tests) gets a new committer."""
    current = _committers.get(sessions)
    if current is None or current.loop is not asyncio.get_running_loop():
        current = _committers[sessions] = GroupCommitter(sessions)
    return current
