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
from connectors.base import CreatedKind, CreatedLookup, CRMConnector, CRMError, NotSupported

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
    found, unknowable, unasked = await _look_up(connector, stuck)
    stuck = [c for c in stuck if c.kind not in unasked]  # ask again next time
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
            elif str(command.id) in unknowable:
                # Sending it again could create it twice, and the CRM cannot say whether it has it:
                # a person checks and retries it by hand if it is missing.
                values = {"status": CommandStatus.DEAD, "last_error": unknowable[str(command.id)]}
                result.dead += 1
                session.add(
                    OutboxAttempt(
                        command_id=command.id,
                        at=now,
                        outcome=AttemptOutcome.DEAD,
                        error=unknowable[str(command.id)],
                    )
                )
            else:  # never reached the CRM (or is harmless to send again): back to the queue
                values = {"status": CommandStatus.PENDING}
            await session.execute(
                update(OutboxCommand).where(OutboxCommand.id == command.id).values(**values)
            )


async def _look_up(
    connector: CRMConnector, stuck: list[OutboxCommand]
) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """Ask the CRM for what the stuck creates left behind. Returns (command id -> CRM id found,
    command id -> why it can never be known, the kinds the CRM could not be asked about now)."""
    found: dict[str, str] = {}
    unknowable: dict[str, str] = {}
    unasked: set[str] = set()
    for kind in CREATED_KINDS:
        commands = [c for c in stuck if c.kind == kind]
        if not commands:
            continue
        lookups = [CreatedLookup(str(c.id), _where(c), marker(c.id)) for c in commands]
        try:
            found |= await connector.find_created(kind, lookups)
        except NotSupported as exc:
            for command in commands:
                unknowable[str(command.id)] = (
                    f"the CRM's answer never came back and it cannot say whether it created this {kind} "
                    f"({exc.crm_text}); check the CRM and retry the command if it is missing"
                )
        except CRMError as exc:
            metrics.crm_error(exc)
            unasked.add(kind)
    return found, unknowable, unasked


# What a create leaves behind, and where to look for it: a new deal in its pipeline, a task or a
# comment on its deal.
CREATED_KINDS: tuple[CreatedKind, ...] = ("deal", "task", "comment")


def _where(command: OutboxCommand) -> str:
    return str(command.payload["pipeline_id" if command.kind == "deal" else "crm_deal_id"])
