"""One request: a chunk of up to 50 commands of one kind, sent, and what became of each recorded.

The chunk is marked "sending" and committed before the request, so a worker that dies before it
records the answer leaves a trace for app.outbox.recovery. Then one of three things is recorded:
the CRM refused the account (the connection pauses, the commands keep their attempts), the request
failed (each command retried with backoff, or dead when its budget is spent, or left in flight when
a create timed out), or the CRM answered per item (done or dead, item by item).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import metrics
from app.connections import health
from app.connections.models import Connection, ConnectionSwitch
from app.db import utcnow
from app.outbox.history import AttemptEntry, log_attempts
from app.outbox.items import IDEMPOTENT_KINDS, send, to_item
from app.outbox.models import OutboxCommand
from app.outbox.statuses import AttemptOutcome, CommandStatus
from connectors.base import (
    AccountBlocked,
    AuthError,
    CRMConnector,
    CRMError,
    ItemResult,
    PermanentError,
    RateLimited,
)

if TYPE_CHECKING:
    from app.outbox.delivery import DrainResult, RetrySettings

# A create whose request timed out is recorded as in flight (see app.outbox.recovery), not resent.
UNCERTAIN = "the CRM's answer never came back; the next run looks it up in the CRM before sending again"


# Request-level refusals that are about the account, not the request: amoCRM's 402 (the subscription
# has lapsed) and a JSON 403 from either CRM (the integration lost its rights, the server's IP is not
# allowed). Every command would get the same answer until someone fixes the account, so the queue
# pauses instead of spending each command's attempts into dead letters.
ACCOUNT_REFUSALS = (402, 403)


def refuses_account(exc: CRMError) -> bool:
    if isinstance(exc, AuthError | AccountBlocked):
        return True
    return isinstance(exc, PermanentError) and exc.item_ref is None and exc.status in ACCOUNT_REFUSALS


def _pause_reason(exc: CRMError) -> str:
    if isinstance(exc, PermanentError):
        return f"the CRM refused this account (HTTP {exc.status}): {exc.crm_text}"
    return f"{type(exc).__name__}: {exc.crm_text}"


async def deliver_chunk(
    sessions: async_sessionmaker[AsyncSession],
    record: Connection,
    connector: CRMConnector,
    kind: str,
    chunk: list[OutboxCommand],
    retry: RetrySettings,
    result: DrainResult,
) -> bool:
    """Send `chunk` in one request and record each command's outcome. False when the CRM refused
    the account: the connection is paused and the drain stops talking to it."""
    items = [to_item(c) for c in chunk]
    now = utcnow()
    await _set_status(sessions, chunk, CommandStatus.SENDING)
    try:
        outcomes = await send(connector, kind, items)
        result.requests += 1
    except CRMError as exc:
        metrics.crm_error(exc)
        await health.record_failure(sessions, record.id, exc)  # the connection's health on the overview
        result.errors.append(exc.crm_text)
        if refuses_account(exc):
            await _pause(sessions, record, chunk, exc, now)
            result.paused = True
            return False
        await _record_request_failure(sessions, kind, chunk, exc, retry, result, now)
        return True
    await health.record_success(sessions, record.id, push=True)  # answered: per-item errors are not outages
    await _record_item_outcomes(sessions, kind, chunk, outcomes, result, now)
    return True


async def _set_status(
    sessions: async_sessionmaker[AsyncSession], chunk: Sequence[OutboxCommand], status: CommandStatus
) -> None:
    async with sessions.begin() as session:
        await session.execute(
            update(OutboxCommand).where(OutboxCommand.id.in_([c.id for c in chunk])).values(status=status)
        )


async def _pause(
    sessions: async_sessionmaker[AsyncSession],
    record: Connection,
    chunk: Sequence[OutboxCommand],
    exc: CRMError,
    now: datetime,
) -> None:
    """The account, not the command, is the problem: pause the queue, keep the attempts. The CRM
    refused the request as a whole, so the commands were not applied: back to the queue."""
    reason = _pause_reason(exc)
    async with sessions.begin() as session:
        await session.execute(
            update(OutboxCommand)
            .where(OutboxCommand.id.in_([c.id for c in chunk]))
            .values(status=CommandStatus.PENDING)
        )
        await session.execute(
            update(Connection)
            .where(Connection.id == record.id)
            .values(status=ConnectionSwitch.PAUSED, paused_reason=reason)
        )
        entries = [(c, AttemptOutcome.PAUSED, reason, exc.crm_code) for c in chunk]
        await log_attempts(session, entries, at=now, batch_size=len(chunk))


async def _record_request_failure(
    sessions: async_sessionmaker[AsyncSession],
    kind: str,
    chunk: Sequence[OutboxCommand],
    exc: CRMError,
    retry: RetrySettings,
    result: DrainResult,
    now: datetime,
) -> None:
    """The request failed as a whole: each command is retried later, or dead once its budget is
    spent. A create that timed out may have been applied, and sending it again could duplicate it:
    it stays in flight for the next drain to look up."""
    hint = exc.retry_after if isinstance(exc, RateLimited) else None
    uncertain = exc.crm_code == "TIMEOUT" and kind not in IDEMPOTENT_KINDS
    async with sessions.begin() as session:
        log: list[AttemptEntry] = []
        for command in chunk:
            values = _after_failure(command, exc, retry, now, hint=hint, uncertain=uncertain)
            if values["status"] == CommandStatus.DEAD:
                result.dead += 1
            else:
                result.retried += 1
            await session.execute(
                update(OutboxCommand).where(OutboxCommand.id == command.id).values(**values)
            )
            logged = AttemptOutcome.UNCERTAIN if uncertain else AttemptOutcome(values["status"])
            log.append((command, logged, exc.crm_text, exc.crm_code))
        await log_attempts(session, log, at=now, batch_size=len(chunk))


def _after_failure(
    command: OutboxCommand,
    exc: CRMError,
    retry: RetrySettings,
    now: datetime,
    *,
    hint: float | None,
    uncertain: bool,
) -> dict[str, Any]:
    """The command's new state after a failed request."""
    attempts = command.attempts + 1
    if uncertain:
        # In flight: the next drain asks the CRM whether it has it (app.outbox.recovery).
        return {"status": CommandStatus.SENDING, "attempts": attempts,
                "last_error": f"{UNCERTAIN} ({exc.crm_text})"}  # fmt: skip
    if attempts >= retry.max_attempts or now - command.created_at > retry.max_age:
        return {"status": CommandStatus.DEAD, "attempts": attempts, "last_error": exc.crm_text}
    return {
        "status": CommandStatus.FAILED,  # failed for now; retried at next_attempt_at
        "attempts": attempts,
        "last_error": exc.crm_text,
        "next_attempt_at": now + retry.next_delay(attempts, hint),
    }


async def _record_item_outcomes(
    sessions: async_sessionmaker[AsyncSession],
    kind: str,
    chunk: Sequence[OutboxCommand],
    outcomes: Sequence[ItemResult],
    result: DrainResult,
    now: datetime,
) -> None:
    """The CRM answered item by item: done with its CRM id, or dead with the CRM's words."""
    by_ref = {o.ref: o for o in outcomes}
    async with sessions.begin() as session:
        sent: list[AttemptEntry] = []
        for command in chunk:
            outcome = by_ref.get(str(command.id))
            values: dict[str, Any]
            if outcome is not None and outcome.ok:
                values = {"status": CommandStatus.DONE, "attempts": command.attempts + 1, "done_at": now,
                          "crm_result_id": outcome.crm_id, "last_error": None}  # fmt: skip
                result.delivered += 1
                metrics.PUSH_LATENCY.labels(kind=kind).observe((now - command.created_at).total_seconds())
            else:
                text = (
                    outcome.error.crm_text
                    if outcome and outcome.error
                    else "the CRM returned no result for it"
                )
                values = {"status": CommandStatus.DEAD, "attempts": command.attempts + 1, "last_error": text}
                result.dead += 1
            await session.execute(
                update(OutboxCommand).where(OutboxCommand.id == command.id).values(**values)
            )
            code = outcome.error.crm_code if outcome and outcome.error else None
            sent.append((command, AttemptOutcome(values["status"]), values.get("last_error"), code))
        await log_attempts(session, sent, at=now, batch_size=len(chunk))
