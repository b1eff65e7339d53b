"""The outbox: every effect on a CRM is a row with an idempotency key, delivered by a worker.

Enqueueing the same key twice is a no-op, so reprocessing an event, an echo or a duplicate delivery
never creates a second task or move. The worker drains one connection at a time under a lease (one
process talks to one account, so the account's rate limit holds across processes), in chunks of at
most 50 items per CRM call so every item's outcome is known.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import leases, metrics
from app.connections.models import Connection
from app.db import utcnow
from app.errors import NotFound
from app.outbox.models import OutboxCommand
from connectors.base import (
    MAX_BATCH,
    AccountBlocked,
    AuthError,
    CreatedLookup,
    CRMConnector,
    CRMError,
    FieldUpdate,
    ItemResult,
    NewComment,
    NewTask,
    PermanentError,
    RateLimited,
    StageMove,
    TaskDeadline,
)

# Delivery order within a drain: a task is created before a deadline move could name it.
KINDS = ("move", "task", "task_due", "comment", "fields")
# Sending these twice changes nothing in the CRM (a stage, a field value, a deadline set again).
IDEMPOTENT_KINDS = frozenset({"move", "task_due", "fields"})
# A create whose request timed out is recorded as in flight (see _recover_in_flight), not resent.
UNCERTAIN = "the CRM's answer never came back; the next run looks it up in the CRM before sending again"
LEASE_TTL = timedelta(minutes=5)


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 8
    max_age: timedelta = timedelta(hours=24)
    base_delay: timedelta = timedelta(seconds=5)
    max_delay: timedelta = timedelta(minutes=30)

    def next_delay(self, attempts: int, hint: float | None = None) -> timedelta:
        """Exponential backoff with full jitter, never sooner than the CRM asked."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(attempts - 1, 0)))
        delay = timedelta(seconds=random.uniform(ceiling.total_seconds() / 2, ceiling.total_seconds()))
        if hint is not None:
            delay = max(delay, timedelta(seconds=hint))
        return delay


async def enqueue(
    session: AsyncSession,
    *,
    connection_id: int,
    kind: str,
    payload: dict[str, Any],
    idempotency_key: str,
    deal_id: int | None = None,
    not_before: datetime | None = None,
) -> bool:
    """Insert a command unless its idempotency key exists; True when it was new."""
    if kind not in KINDS:
        raise ValueError(f"unknown outbox command kind {kind!r}")
    now = utcnow()
    values = {
        "connection_id": connection_id,
        "deal_id": deal_id,
        "kind": kind,
        "payload": payload,
        "idempotency_key": idempotency_key,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": not_before or now,
        "created_at": now,
    }
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    result = await session.execute(
        insert(OutboxCommand).values(**values).on_conflict_do_nothing(index_elements=["idempotency_key"])
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


@dataclass
class DrainResult:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    paused: bool = False
    requests: int = 0
    errors: list[str] = field(default_factory=list)


def marker(command_id: int) -> str:
    """Written into every task and comment we create, so that after a crash we can tell whether
    the CRM got it (see _recover_in_flight). Short, and unlikely to occur by accident."""
    return f"[fs:{command_id}]"


def _with_marker(text: str, command_id: int) -> str:
    return f"{text}\n{marker(command_id)}" if text else marker(command_id)


def _dto(command: OutboxCommand, crm_deal_id: str) -> Any:
    ref, p = str(command.id), command.payload
    if command.kind == "move":
        return StageMove(ref, crm_deal_id, str(p["pipeline_id"]), str(p["stage_id"]))
    if command.kind == "task":
        return NewTask(
            ref,
            crm_deal_id,
            p["title"],
            datetime.fromisoformat(p["due_at"]),
            p.get("responsible_id"),
            _with_marker(p.get("description", ""), command.id),
        )
    if command.kind == "task_due":
        return TaskDeadline(ref, str(p["task_id"]), datetime.fromisoformat(p["due_at"]))
    if command.kind == "comment":
        return NewComment(ref, crm_deal_id, _with_marker(p["text"], command.id))
    return FieldUpdate(ref, crm_deal_id, p["values"])


async def _send(connector: CRMConnector, kind: str, items: Sequence[Any]) -> list[ItemResult]:
    if kind == "move":
        return await connector.move_deals(items)
    if kind == "task":
        return await connector.create_tasks(items)
    if kind == "task_due":
        return await connector.move_task_deadlines(items)
    if kind == "comment":
        return await connector.add_comments(items)
    return await connector.update_deal_fields(items)


async def drain_connection(
    sessions: async_sessionmaker[AsyncSession],
    record: Connection,
    connector: CRMConnector,
    *,
    retry: RetrySettings | None = None,
    limit: int = 1000,
) -> DrainResult:
    """Deliver due commands of one connection. Returns without work when another process holds
    the connection's lease or the connection is paused."""
    retry = retry or RetrySettings()
    result = DrainResult()
    key = f"outbox:{record.id}"
    if record.status != "active" or not await leases.acquire(sessions, key, LEASE_TTL):
        return result
    try:
        await _recover_in_flight(sessions, record.id, connector, result)
        async with sessions() as session:
            rows = await session.execute(
                select(OutboxCommand, OutboxCommand.payload)
                .where(
                    OutboxCommand.connection_id == record.id,
                    OutboxCommand.status.in_(("pending", "failed")),
                    OutboxCommand.next_attempt_at <= utcnow(),
                )
                .order_by(OutboxCommand.id)
                .limit(limit)
            )
            commands = [c for c, _ in rows]
        for kind in KINDS:
            batch = [c for c in commands if c.kind == kind]
            for start in range(0, len(batch), MAX_BATCH):
                chunk = batch[start : start + MAX_BATCH]
                if not await _deliver_chunk(sessions, record, connector, kind, chunk, retry, result):
                    return result  # connection paused: stop talking to this account
                await leases.acquire(sessions, key, LEASE_TTL)  # keep the lease while we work
    finally:
        await leases.release(sessions, key)
    return result


async def _recover_in_flight(
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
                    OutboxCommand.connection_id == connection_id, OutboxCommand.status == "sending"
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
                    "status": "done",
                    "crm_result_id": crm_id,
                    "done_at": now,
                    "last_error": None,
                }
                result.delivered += 1
            else:  # never reached the CRM (or is harmless to send again): back to the queue
                values = {"status": "pending"}
            await session.execute(
                update(OutboxCommand).where(OutboxCommand.id == command.id).values(**values)
            )


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


async def _deliver_chunk(
    sessions: async_sessionmaker[AsyncSession],
    record: Connection,
    connector: CRMConnector,
    kind: str,
    chunk: list[OutboxCommand],
    retry: RetrySettings,
    result: DrainResult,
) -> bool:
    items = [_dto(c, str(c.payload["crm_deal_id"])) for c in chunk]
    now = utcnow()
    # Committed before the request: if this process dies before recording the answer, the next
    # drain knows these may have reached the CRM (see _recover_in_flight).
    async with sessions.begin() as session:
        await session.execute(
            update(OutboxCommand).where(OutboxCommand.id.in_([c.id for c in chunk])).values(status="sending")
        )
    try:
        outcomes = await _send(connector, kind, items)
        result.requests += 1
    except CRMError as exc:
        metrics.crm_error(exc)
        if refuses_account(exc):
            # The account, not the command, is the problem: pause the queue, keep the attempts. The
            # CRM refused the request as a whole, so the commands were not applied: back to the queue.
            async with sessions.begin() as session:
                await session.execute(
                    update(OutboxCommand)
                    .where(OutboxCommand.id.in_([c.id for c in chunk]))
                    .values(status="pending")
                )
                await session.execute(
                    update(Connection)
                    .where(Connection.id == record.id)
                    .values(status="paused", paused_reason=_pause_reason(exc))
                )
            result.paused = True
            result.errors.append(exc.crm_text)
            return False
        hint = exc.retry_after if isinstance(exc, RateLimited) else None
        # A create that timed out may have been applied: sending it again could duplicate it.
        uncertain = exc.crm_code == "TIMEOUT" and kind not in IDEMPOTENT_KINDS
        values: dict[str, Any]
        async with sessions.begin() as session:
            for command in chunk:
                attempts = command.attempts + 1
                too_old = now - command.created_at > retry.max_age
                if uncertain:
                    # In flight: the next drain asks the CRM whether it has it (_recover_in_flight).
                    values = {
                        "status": "sending",
                        "attempts": attempts,
                        "last_error": f"{UNCERTAIN} ({exc.crm_text})",
                    }
                    result.retried += 1
                elif attempts >= retry.max_attempts or too_old:
                    values = {
                        "status": "dead",
                        "attempts": attempts,
                        "last_error": exc.crm_text,
                    }
                    result.dead += 1
                else:
                    values = {
                        "status": "failed",  # failed for now; retried at next_attempt_at
                        "attempts": attempts,
                        "last_error": exc.crm_text,
                        "next_attempt_at": now + retry.next_delay(attempts, hint),
                    }
                    result.retried += 1
                await session.execute(
                    update(OutboxCommand).where(OutboxCommand.id == command.id).values(**values)
                )
        result.errors.append(exc.crm_text)
        return True
    by_ref = {o.ref: o for o in outcomes}
    async with sessions.begin() as session:
        for command in chunk:
            outcome = by_ref.get(str(command.id))
            if outcome is not None and outcome.ok:
                values = {"status": "done", "attempts": command.attempts + 1, "done_at": now,
                          "crm_result_id": outcome.crm_id, "last_error": None}  # fmt: skip
                result.delivered += 1
                metrics.PUSH_LATENCY.labels(kind=kind).observe((now - command.created_at).total_seconds())
            else:
                text = (
                    outcome.error.crm_text
                    if outcome and outcome.error
                    else "the CRM returned no result for it"
                )
                values = {"status": "dead", "attempts": command.attempts + 1, "last_error": text}
                result.dead += 1
            await session.execute(
                update(OutboxCommand).where(OutboxCommand.id == command.id).values(**values)
            )
    return True


RETRYABLE_STATUSES = ("failed", "dead")


class CommandNotFound(NotFound):
    pass


class CommandNotRetryable(ValueError):
    pass


async def retry_command(session: AsyncSession, command_id: int) -> OutboxCommand:
    """Send a failed or dead command again now, with a fresh series of attempts."""
    command = await session.get(OutboxCommand, command_id)
    if command is None:
        raise CommandNotFound(f"no outbox command with id {command_id}")
    if command.status not in RETRYABLE_STATUSES:
        raise CommandNotRetryable(
            f"command {command_id} is {command.status}; only failed or dead commands are retried"
        )
    command.status = "pending"
    command.attempts = 0
    command.next_attempt_at = utcnow()
    return command


async def retry_matching(
    session: AsyncSession,
    *,
    status: str | None = None,
    connection_id: int | None = None,
    kind: str | None = None,
    ids: Sequence[int] | None = None,
) -> int:
    """Bulk replay: every failed/dead command matching the filter goes back to pending."""
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
    result = await session.execute(query.values(status="pending", attempts=0, next_attempt_at=utcnow()))
    return int(result.rowcount)  # type: ignore[attr-defined]
