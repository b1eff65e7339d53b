"""Commands that wait for another (after_command_id): sent once it is done, never when it died."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import utcnow
from app.outbox.models import OutboxAttempt, OutboxCommand
from app.outbox.statuses import AttemptOutcome, CommandStatus

if TYPE_CHECKING:
    from app.outbox.delivery import DrainResult

# Statuses of a prerequisite that make its dependents wait (neither done nor given up).
WAITING_FOR = (CommandStatus.PENDING, CommandStatus.SENDING, CommandStatus.FAILED)


def not_sent_reason(dependent: OutboxCommand, prerequisite_kind: str, prerequisite_error: str | None) -> str:
    what = (
        "the move it describes"
        if dependent.kind == "comment" and prerequisite_kind == "move"
        else f"the {prerequisite_kind} it depends on"
    )
    return f"not sent: {what} failed: {prerequisite_error or 'no error recorded'}"


async def ready_to_send(
    sessions: async_sessionmaker[AsyncSession],
    batch: list[OutboxCommand],
    result: DrainResult,
) -> list[OutboxCommand]:
    """The commands of `batch` that may be sent now. One waiting for a command that is not done yet
    stays as it is (no attempt used, not rescheduled: it is looked at again by every drain). One
    waiting for a dead command is never sent: it is dead-lettered with the reason, so the CRM is
    never told about an effect that did not happen (a "moved back" comment without the move)."""
    prerequisite_ids = {c.after_command_id for c in batch if c.after_command_id is not None}
    if not prerequisite_ids:
        return batch
    async with sessions() as session:
        rows = await session.execute(
            select(
                OutboxCommand.id, OutboxCommand.kind, OutboxCommand.status, OutboxCommand.last_error
            ).where(OutboxCommand.id.in_(prerequisite_ids))
        )
        prerequisites = {row.id: row for row in rows}
    ready: list[OutboxCommand] = []
    blocked: list[tuple[OutboxCommand, str]] = []
    for command in batch:
        prerequisite = prerequisites.get(command.after_command_id) if command.after_command_id else None
        if prerequisite is None or prerequisite.status == CommandStatus.DONE:
            ready.append(command)  # None: the foreign key cascades, so only a command with none
        elif prerequisite.status not in WAITING_FOR:  # dead
            blocked.append((command, not_sent_reason(command, prerequisite.kind, prerequisite.last_error)))
    if blocked:
        now = utcnow()
        async with sessions.begin() as session:
            for command, reason in blocked:
                await session.execute(
                    update(OutboxCommand)
                    .where(OutboxCommand.id == command.id)
                    .values(status=CommandStatus.DEAD, last_error=reason)
                )
            session.add_all(
                OutboxAttempt(command_id=c.id, at=now, outcome=AttemptOutcome.BLOCKED, error=reason)
                for c, reason in blocked
            )
        result.blocked += len(blocked)
        result.dead += len(blocked)
    return ready
