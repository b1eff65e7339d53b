"""Send failed and dead commands again, by hand (API, Failures page): one, or all that match."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.outbox.models import OutboxAttempt, OutboxCommand
from app.outbox.service import CommandNotFound
from app.outbox.statuses import RETRYABLE_STATUSES, AttemptOutcome, CommandStatus


class CommandNotRetryable(ValueError):
    pass


async def retry_command(session: AsyncSession, command_id: int) -> OutboxCommand:
    """Send a failed or dead command again now, with a fresh series of attempts (its history stays),
    and with it the commands left unsent because they wait for it (a move's comment)."""
    command = await session.get(OutboxCommand, command_id)
    if command is None:
        raise CommandNotFound(f"no outbox command with id {command_id}")
    if command.status not in RETRYABLE_STATUSES:
        raise CommandNotRetryable(
            f"command {command_id} is {command.status}; only failed or dead commands are retried"
        )
    now = utcnow()
    command.status = CommandStatus.PENDING
    command.attempts = 0  # the budget of the new series; the attempts made so far stay in the history
    command.next_attempt_at = now
    session.add(OutboxAttempt(command_id=command.id, at=now, outcome=AttemptOutcome.REQUEUED))
    await _requeue_dependents(session, [command.id], now)
    return command


async def _requeue_dependents(session: AsyncSession, command_ids: Sequence[int], now: datetime) -> int:
    """Put back to pending the dead commands that wait for the given ones (and those waiting for
    them): they were dead-lettered unsent because their prerequisite failed, and go once it is done.
    Only unsent ones can be dead while their prerequisite is not done (a dependent is sent only
    after it), and a done command is never retried, so no command the CRM refused is re-sent here."""
    requeued = 0
    frontier = list(command_ids)
    seen = set(frontier)
    while frontier:
        rows = await session.execute(
            update(OutboxCommand)
            .where(OutboxCommand.after_command_id.in_(frontier), OutboxCommand.status == CommandStatus.DEAD)
            .values(status=CommandStatus.PENDING, attempts=0, next_attempt_at=now)
            .returning(OutboxCommand.id)
            .execution_options(synchronize_session=False)
        )
        frontier = [i for i in rows.scalars() if i not in seen]
        seen.update(frontier)
        session.add_all(
            OutboxAttempt(command_id=i, at=now, outcome=AttemptOutcome.REQUEUED) for i in frontier
        )
        requeued += len(frontier)
    return requeued


async def retry_matching(
    session: AsyncSession,
    *,
    status: str | None = None,
    connection_id: int | None = None,
    kind: str | None = None,
    ids: Sequence[int] | None = None,
) -> int:
    """Bulk replay: every failed/dead command matching the filter goes back to pending, with the
    commands left unsent because they wait for one of them. Returns how many went back, those
    included; their history stays."""
    statuses = (status,) if status else RETRYABLE_STATUSES
    if any(s not in RETRYABLE_STATUSES for s in statuses):
        raise CommandNotRetryable(f"only failed or dead commands can be retried, not {status!r}")
    query = update(OutboxCommand).where(OutboxCommand.status.in_(statuses))
    if connection_id is not None:
        query = query.where(OutboxCommand.connection_id == connection_id)
    if kind is not None:
        query = query.where(OutboxCommand.kind == kind)
    if ids is not None:
        query = query.where(OutboxCommand.id.in_(list(ids)))
    now = utcnow()
    rows = await session.execute(
        query.values(status=CommandStatus.PENDING, attempts=0, next_attempt_at=now)
        .returning(OutboxCommand.id)
        .execution_options(synchronize_session=False)
    )
    retried = list(rows.scalars())
    session.add_all(OutboxAttempt(command_id=i, at=now, outcome=AttemptOutcome.REQUEUED) for i in retried)
    return len(retried) + await _requeue_dependents(session, retried, now)
