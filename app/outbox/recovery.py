"""Commands a worker left "sending" when it died mid-request: found in the CRM, or queued again."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import metrics
from app.db import utcnow
from app.outbox.items import marker
from app.outbox.models import OutboxAttempt, OutboxCommand
from app.outbox.statuses import AttemptOutcome, CommandStatus
from connectors.base import CreatedLookup, CRMConnector, CRMError

if TYPE_CHECKING:
    from app.outbox.delivery import DrainResult


async def recover_in_flight(
    sessions: async_sessionmaker[AsyncSession],
    connection_id: int,
    connector: CRMConnector,
    result: DrainResult,
) -> None:
    """Commands left "sending" by a worker that died mid-request. We hold the connection's lease,
    so no live worker is sending them. What is safe to send twice goes back to the queue. A task or
    comment may already exist: it is looked up in the CRM by its marker and recorded as done when
    found, queued again when not. If the CRM cannot be asked now, they stay "sending" for the next
    drain: never a duplicate, never dropped."""
    async with sessions() as session:
        stuck = list(
            await session.scalars(
                select(OutboxCommand).where(
                    OutboxCommand.connection_id == connection_id,
                    OutboxCommand.status == CommandStatus.SENDING,
                )
            )
        )
    if not stuck:
        return
    found: dict[str, str] = {}
    for kind in ("task", "comment"):
        lookups = [
            CreatedLookup(str(c.id), str(c.payload["crm_deal_id"]), marker(c.id))
            for c in stuck
            if c.kind == kind
        ]
        if lookups:
            try:
                found |= await connector.find_created(kind, lookups)
            except CRMError as exc:
                metrics.crm_error(exc)
                stuck = [c for c in stuck if c.kind != kind]  # ask again next time
    now = utcnow()
    async with sessions.begin() as session:
        for command in stuck:
            crm_id = found.get(str(command.id))
            if crm_id is not None:
                values: dict[str, Any] = {
                    "status": CommandStatus.DONE,
                    "crm_result_id": crm_id,
                    "done_at": now,
                    "last_error": None,
                }
                result.delivered += 1
                session.add(OutboxAttempt(command_id=command.id, at=now, outcome=AttemptOutcome.FOUND))
            else:  # never reached the CRM (or is harmless to send again): back to the queue
                values = {"status": CommandStatus.PENDING}
            await session.execute(
                update(OutboxCommand).where(OutboxCommand.id == command.id).values(**values)
            )
