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

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import leases, metrics
from app.connections import health
from app.connections.models import Connection, ConnectionSwitch
from app.db import utcnow
from app.errors import NotFound
from app.outbox.models import OutboxAttempt, OutboxCommand
from app.outbox.statuses import AttemptOutcome, CommandStatus
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
    after_command_id: int | None = None,
) -> bool:
    """Insert a command unless its idempotency key exists; True when it was new.

    `after_command_id`: a command of the same connection this one must wait for. It is sent only
    once that one is done, and dead-lettered unsent ("not sent: ...") when that one is dead."""
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
    dead: int = 0  # includes `blocked`: those end dead too, and count as dead letters
    blocked: int = 0  # not sent because the command they wait for is dead
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
    if record.status != ConnectionSwitch.ACTIVE or not await leases.acquire(sessions, key, LEASE_TTL):
        return result
    try:
        await _recover_in_flight(sessions, record.id, connector, result)
        async with sessions() as session:
            rows = await session.execute(
                select(OutboxCommand, OutboxCommand.payload)
                .where(
                    OutboxCommand.connection_id == record.id,
                    OutboxCommand.status.in_((CommandStatus.PENDING, CommandStatus.FAILED)),
                    OutboxCommand.next_attempt_at <= utcnow(),
                )
                .order_by(OutboxCommand.id)
                .limit(limit)
            )
            commands = [c for c, _ in rows]
        for kind in KINDS:
            # Decided per kind, after the kinds before it were sent: a comment waiting for a move
            # goes in the same drain the move succeeded in.
            batch = await _ready(sessions, [c for c in commands if c.kind == kind], result)
            for start in range(0, len(batch), MAX_BATCH):
                chunk = batch[start : start + MAX_BATCH]
                if not await _deliver_chunk(sessions, record, connector, kind, chunk, retry, result):
                    return result  # connection paused: stop talking to this account
                await leases.acquire(sessions, key, LEASE_TTL)  # keep the lease while we work
    finally:
        await leases.release(sessions, key)
    return result


# Statuses of a prerequisite that make its dependents wait (neither done nor given up).
WAITING_FOR = (CommandStatus.PENDING, CommandStatus.SENDING, CommandStatus.FAILED)


def not_sent_reason(dependent: OutboxCommand, prerequisite_kind: str, prerequisite_error: str | None) -> str:
    what = (
        "the move it describes"
        if dependent.kind == "comment" and prerequisite_kind == "move"
        else f"the {prerequisite_kind} it depends on"
    )
    return f"not sent: {what} failed: {prerequisite_error or 'no error recorded'}"


async def _ready(
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


async def _next_attempt_numbers(session: AsyncSession, command_ids: Sequence[int]) -> dict[int, int]:
    """The number the next request carrying each command gets in its history (1-based, never reset)."""
    rows = await session.execute(
        select(OutboxAttempt.command_id, func.max(OutboxAttempt.attempt))
        .where(OutboxAttempt.command_id.in_(list(command_ids)))
        .group_by(OutboxAttempt.command_id)
    )
    last = {command_id: number or 0 for command_id, number in rows}
    return {command_id: last.get(command_id, 0) + 1 for command_id in command_ids}


async def _log_attempts(
    session: AsyncSession,
    entries: Sequence[tuple[OutboxCommand, AttemptOutcome, str | None, str | None]],
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
            update(OutboxCommand)
            .where(OutboxCommand.id.in_([c.id for c in chunk]))
            .values(status=CommandStatus.SENDING)
        )
    try:
        outcomes = await _send(connector, kind, items)
        result.requests += 1
    except CRMError as exc:
        metrics.crm_error(exc)
        await health.record_failure(sessions, record.id, exc)  # the connection's health on the overview
        if refuses_account(exc):
            # The account, not the command, is the problem: pause the queue, keep the attempts. The
            # CRM refused the request as a whole, so the commands were not applied: back to the queue.
            async with sessions.begin() as session:
                await session.execute(
                    update(OutboxCommand)
                    .where(OutboxCommand.id.in_([c.id for c in chunk]))
                    .values(status=CommandStatus.PENDING)
                )
                await session.execute(
                    update(Connection)
                    .where(Connection.id == record.id)
                    .values(status=ConnectionSwitch.PAUSED, paused_reason=_pause_reason(exc))
                )
                await _log_attempts(
                    session,
                    [(c, AttemptOutcome.PAUSED, _pause_reason(exc), exc.crm_code) for c in chunk],
                    at=now,
                    batch_size=len(chunk),
                )
            result.paused = True
            result.errors.append(exc.crm_text)
            return False
        hint = exc.retry_after if isinstance(exc, RateLimited) else None
        # A create that timed out may have been applied: sending it again could duplicate it.
        uncertain = exc.crm_code == "TIMEOUT" and kind not in IDEMPOTENT_KINDS
        values: dict[str, Any]
        async with sessions.begin() as session:
            log: list[tuple[OutboxCommand, AttemptOutcome, str | None, str | None]] = []
            for command in chunk:
                attempts = command.attempts + 1
                too_old = now - command.created_at > retry.max_age
                if uncertain:
                    # In flight: the next drain asks the CRM whether it has it (_recover_in_flight).
                    values = {
                        "status": CommandStatus.SENDING,
                        "attempts": attempts,
                        "last_error": f"{UNCERTAIN} ({exc.crm_text})",
                    }
                    result.retried += 1
                elif attempts >= retry.max_attempts or too_old:
                    values = {
                        "status": CommandStatus.DEAD,
                        "attempts": attempts,
                        "last_error": exc.crm_text,
                    }
                    result.dead += 1
                else:
                    values = {
                        "status": CommandStatus.FAILED,  # failed for now; retried at next_attempt_at
                        "attempts": attempts,
                        "last_error": exc.crm_text,
                        "next_attempt_at": now + retry.next_delay(attempts, hint),
                    }
                    result.retried += 1
                await session.execute(
                    update(OutboxCommand).where(OutboxCommand.id == command.id).values(**values)
                )
                logged = AttemptOutcome.UNCERTAIN if uncertain else AttemptOutcome(values["status"])
                log.append((command, logged, exc.crm_text, exc.crm_code))
            await _log_attempts(session, log, at=now, batch_size=len(chunk))
        result.errors.append(exc.crm_text)
        return True
    await health.record_success(sessions, record.id, push=True)  # answered: per-item errors are not outages
    by_ref = {o.ref: o for o in outcomes}
    async with sessions.begin() as session:
        sent: list[tuple[OutboxCommand, AttemptOutcome, str | None, str | None]] = []
        for command in chunk:
            outcome = by_ref.get(str(command.id))
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
        await _log_attempts(session, sent, at=now, batch_size=len(chunk))
    return True


RETRYABLE_STATUSES = (CommandStatus.FAILED, CommandStatus.DEAD)


class CommandNotFound(NotFound):
    pass


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


async def list_commands(
    session: AsyncSession,
    *,
    status: str | None = None,
    connection: str | None = None,
    deal_id: int | None = None,
    limit: int = 100,
) -> list[tuple[OutboxCommand, str]]:
    """Newest commands first, each with its connection's name, optionally filtered."""
    query = select(OutboxCommand, Connection.name).join(
        Connection, Connection.id == OutboxCommand.connection_id
    )
    if status is not None:
        query = query.where(OutboxCommand.status == status)
    if connection is not None:
        query = query.where(Connection.name == connection)
    if deal_id is not None:
        query = query.where(OutboxCommand.deal_id == deal_id)
    rows = await session.execute(query.order_by(OutboxCommand.id.desc()).limit(limit))
    return [(command, name) for command, name in rows]


async def command_with_connection(session: AsyncSession, command_id: int) -> tuple[OutboxCommand, str]:
    """One command and its connection's name."""
    row = (
        await session.execute(
            select(OutboxCommand, Connection.name)
            .join(Connection, Connection.id == OutboxCommand.connection_id)
            .where(OutboxCommand.id == command_id)
        )
    ).first()
    if row is None:
        raise CommandNotFound(f"no outbox command with id {command_id}")
    command, name = row
    return command, name


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


async def prerequisites(session: AsyncSession, command_ids: Sequence[int]) -> dict[int, int]:
    """Command id -> the command it waits for, for those of the given commands that wait for one."""
    if not command_ids:
        return {}
    rows = await session.execute(
        select(OutboxCommand.id, OutboxCommand.after_command_id).where(
            OutboxCommand.id.in_(list(command_ids)), OutboxCommand.after_command_id.is_not(None)
        )
    )
    return {command_id: after for command_id, after in rows if after is not None}
