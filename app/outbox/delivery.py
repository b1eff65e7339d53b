"""Deliver the outbox: a connection is drained under a lease (one process talks to one account, so
the account's rate limit holds across processes), in chunks of at most 50 items per CRM call so
every item's outcome is known. The worker drains many connections at once, in turns of at most
`max_chunks` requests each (app.concurrency), so one account's backlog never holds up another's.

A drain: recover what a dead worker left in flight (app.outbox.recovery), then per kind in delivery
order, the commands whose prerequisite allows it (app.outbox.dependencies), one request per chunk
(app.outbox.chunk).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import leases
from app.config import Settings
from app.connections.models import Connection, ConnectionSwitch
from app.db import utcnow
from app.outbox.chunk import deliver_chunk
from app.outbox.dependencies import ready_to_send
from app.outbox.models import OutboxCommand
from app.outbox.recovery import recover_in_flight
from app.outbox.statuses import KINDS, CommandStatus
from connectors.base import MAX_BATCH, CRMConnector

LEASE_TTL = timedelta(minutes=5)


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 8
    max_age: timedelta = timedelta(hours=24)
    base_delay: timedelta = timedelta(seconds=5)
    max_delay: timedelta = timedelta(minutes=30)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrySettings:
        return cls(
            max_attempts=settings.outbox_max_attempts,
            max_age=timedelta(hours=settings.outbox_max_age_hours),
            base_delay=timedelta(seconds=settings.outbox_retry_base_delay_seconds),
            max_delay=timedelta(seconds=settings.outbox_retry_max_delay_seconds),
        )

    def next_delay(self, attempts: int, hint: float | None = None) -> timedelta:
        """Exponential backoff with full jitter, never sooner than the CRM asked."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(attempts - 1, 0)))
        delay = timedelta(seconds=random.uniform(ceiling.total_seconds() / 2, ceiling.total_seconds()))
        if hint is not None:
            delay = max(delay, timedelta(seconds=hint))
        return delay


@dataclass
class DrainResult:
    delivered: int = 0
    retried: int = 0
    dead: int = 0  # includes `blocked`: those end dead too, and count as dead letters
    blocked: int = 0  # not sent because the command they wait for is dead
    paused: bool = False
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    more: bool = False  # stopped at `max_chunks` with due commands left: the connection wants a new turn

    def add(self, other: DrainResult) -> None:
        """Add another drain's counts to this total."""
        self.delivered += other.delivered
        self.retried += other.retried
        self.dead += other.dead
        self.blocked += other.blocked
        self.requests += other.requests


async def drain_connection(
    sessions: async_sessionmaker[AsyncSession],
    record: Connection,
    connector: CRMConnector,
    *,
    retry: RetrySettings | None = None,
    limit: int = 1000,
    max_chunks: int | None = None,
) -> DrainResult:
    """Deliver due commands of one connection. Returns without work when another process holds
    the connection's lease or the connection is paused. With `max_chunks`, stops after that many
    requests (a turn: others get theirs) and sets `more` when due commands were left."""
    retry = retry or RetrySettings()
    result = DrainResult()
    key = f"outbox:{record.id}"
    if record.status != ConnectionSwitch.ACTIVE or not await leases.acquire(sessions, key, LEASE_TTL):
        return result
    try:
        await recover_in_flight(sessions, record.id, connector, result)
        commands = await _due_commands(sessions, record.id, limit)
        chunks = 0
        for kind in KINDS:
            # Decided per kind, after the kinds before it were sent: a comment waiting for a move
            # goes in the same drain the move succeeded in.
            batch = await ready_to_send(sessions, [c for c in commands if c.kind == kind], result)
            for start in range(0, len(batch), MAX_BATCH):
                if max_chunks is not None and chunks >= max_chunks:
                    result.more = True  # the turn is over; the rest goes in the next one
                    return result
                chunk = batch[start : start + MAX_BATCH]
                chunks += 1
                if not await deliver_chunk(sessions, record, connector, kind, chunk, retry, result):
                    return result  # connection paused: stop talking to this account
                await leases.acquire(sessions, key, LEASE_TTL)  # keep the lease while we work
        result.more = len(commands) >= limit and chunks > 0  # more were due than one read holds
    finally:
        await leases.release(sessions, key)
    return result


async def _due_commands(
    sessions: async_sessionmaker[AsyncSession], connection_id: int, limit: int
) -> list[OutboxCommand]:
    """The connection's commands due now, oldest first."""
    async with sessions() as session:
        rows = await session.execute(
            select(OutboxCommand, OutboxCommand.payload)
            .where(
                OutboxCommand.connection_id == connection_id,
                OutboxCommand.status.in_((CommandStatus.PENDING, CommandStatus.FAILED)),
                OutboxCommand.next_attempt_at <= utcnow(),
            )
            .order_by(OutboxCommand.id)
            .limit(limit)
        )
        return [c for c, _ in rows]


async def connections_with_work(session: AsyncSession) -> list[Connection]:
    """Active connections with commands due now or left in flight (recovery): the only ones a
    worker gives a turn, so hundreds of idle connections cost one query, not a lease each. One
    index seek per connection (ix_outbox_commands_due)."""
    due = exists().where(
        OutboxCommand.connection_id == Connection.id,
        or_(
            and_(
                OutboxCommand.status.in_((CommandStatus.PENDING, CommandStatus.FAILED)),
                OutboxCommand.next_attempt_at <= utcnow(),
            ),
            OutboxCommand.status == CommandStatus.SENDING,
        ),
    )
    return list(
        await session.scalars(
            select(Connection)
            .where(Connection.status == ConnectionSwitch.ACTIVE, due)
            .order_by(Connection.id)
        )
    )
