"""Each command's history: one row per request that carried it, and the decisions without one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.outbox.models import OutboxAttempt, OutboxCommand
from app.outbox.statuses import AttemptOutcome

# (command, outcome, error, the CRM's error code)
AttemptEntry = tuple[OutboxCommand, AttemptOutcome, str | None, str | None]


async def _next_attempt_numbers(session: AsyncSession, command_ids: Sequence[int]) -> dict[int, int]:
    """The number the next request carrying each command gets in its history (1-based, never reset)."""
    rows = await session.execute(
        select(OutboxAttempt.command_id, func.max(OutboxAttempt.attempt))
        .where(OutboxAttempt.command_id.in_(list(command_ids)))
        .group_by(OutboxAttempt.command_id)
    )
    last = {command_id: number or 0 for command_id, number in rows}
    return {command_id: last.get(command_id, 0) + 1 for command_id in command_ids}


async def log_attempts(
    session: AsyncSession,
    entries: Sequence[AttemptEntry],
    *,
    at: datetime,
    batch_size: int,
) -> None:
    """Append one history row per command carried by a request: (command, outcome, error, CRM code)."""
    numbers = await _next_attempt_numbers(session, [c.id for c, _, _, _ in entries])
    session.add_all(
        OutboxAttempt(
            command_id=command.id,
            attempt=numbers[command.id],
            at=at,
            outcome=outcome,
            error=error,
            crm_code=crm_code[:64] if crm_code else None,
            batch_size=batch_size,
        )
        for command, outcome, error, crm_code in entries
    )


async def attempt_history(
    session: AsyncSession, command_ids: Sequence[int]
) -> dict[int, list[OutboxAttempt]]:
    """Each command's history, oldest first (commands without one are absent)."""
    if not command_ids:
        return {}
    rows = await session.scalars(
        select(OutboxAttempt)
        .where(OutboxAttempt.command_id.in_(list(command_ids)))
        .order_by(OutboxAttempt.command_id, OutboxAttempt.id)
    )
    history: dict[int, list[OutboxAttempt]] = {}
    for row in rows:
        history.setdefault(row.command_id, []).append(row)
    return history
