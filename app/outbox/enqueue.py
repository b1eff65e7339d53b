"""Queue a command: every effect on a CRM is a row with an idempotency key.

Enqueueing the same key twice is a no-op, so reprocessing an event, an echo or a duplicate delivery
never creates a second task or move.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import dialect_insert, utcnow
from app.outbox.models import OutboxCommand
from app.outbox.statuses import KINDS, CommandStatus, RuleName


async def enqueue(
    session: AsyncSession,
    *,
    connection_id: int,
    kind: str,
    payload: dict[str, Any],
    idempotency_key: str,
    deal_id: int | None = None,
    not_before: datetime | None = None,
    after_command_id: int | None = None,
    rule: RuleName | None = None,
    stage_entry_id: int | None = None,
) -> bool:
    """Insert a command unless its idempotency key exists; True when it was new.

    `after_command_id`: a command of the same connection this one must wait for. It is sent only
    once that one is done, and dead-lettered unsent ("not sent: ...") when that one is dead.
    `rule` and `stage_entry_id`: which rule queued it, for which stage entry (the rules' own
    bookkeeping; None for other callers)."""
    if kind not in KINDS:
        raise ValueError(f"unknown outbox command kind {kind!r}")
    if after_command_id is not None:
        owner = await session.scalar(
            select(OutboxCommand.connection_id).where(OutboxCommand.id == after_command_id)
        )
        if owner is None:
            raise ValueError(f"outbox command {after_command_id} (the prerequisite) does not exist")
        if owner != connection_id:
            # One connection's drain never sees another's commands: the wait could never end.
            raise ValueError(
                f"outbox command {after_command_id} belongs to another connection; "
                "a command can only wait for a command of its own connection"
            )
    now = utcnow()
    values = {
        "connection_id": connection_id,
        "deal_id": deal_id,
        "kind": kind,
        "payload": payload,
        "idempotency_key": idempotency_key,
        "status": CommandStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": not_before or now,
        "created_at": now,
        "after_command_id": after_command_id,
        "rule": rule,
        "stage_entry_id": stage_entry_id,
    }
    result = await session.execute(
        dialect_insert(session, OutboxCommand)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
