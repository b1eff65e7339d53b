"""Inbox: durable storage of webhook deliveries, reading it back for the API and dashboard, and
sending failed events back to the processor."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import Connection
from app.db import dialect_insert, utcnow
from app.errors import NotFound
from app.webhooks.models import EventStatus, InboxEvent

# A Bitrix24 event's auth[application_token]: as form data (the key raw or percent-encoded) and as
# JSON (relays forward the same structure). An unterminated value (a preview cut inside it) counts.
_FORM_TOKEN = re.compile(rb"(?:^|(?<=&))(auth(?:\[|%5[Bb])application_token(?:\]|%5[Dd])=)[^&]*")
_JSON_TOKEN = re.compile(rb'("application_token"\s*:\s*)"(?:[^"\\]|\\.)*"?')
REDACTED = b"***"


def strip_token(body: bytes) -> bytes:
    """The body with the value of every application_token it carries replaced by "***", every
    other byte as received. Stored bodies must not hold the credential that proves a delivery:
    it was checked on arrival, and the processor needs only the event."""
    body = _FORM_TOKEN.sub(rb"\1" + REDACTED, body)
    return _JSON_TOKEN.sub(rb'\1"' + REDACTED + b'"', body)


def body_preview(head: bytes) -> str:
    """Text of the head of a stored body for the API and the dashboard, with any token redacted
    (bodies stored before tokens were stripped still carry theirs)."""
    return strip_token(head).decode("utf-8", errors="replace")


def dedupe_key(event_keys: Sequence[str], body: bytes) -> str:
    """One key per delivery: the parsed events' own keys when we have them (a CRM re-sending the
    same change yields the same key even if volatile auth fields differ), else the body's hash."""
    material = "\n".join(sorted(event_keys)).encode() if event_keys else body
    return hashlib.sha256(material).hexdigest()


@dataclass
class IncomingEvent:
    """One delivery's inbox row before it is stored."""

    connection_id: int
    key: str
    body: bytes
    content_type: str
    error: str | None = None


def _row(event: IncomingEvent, received_at: datetime) -> dict[str, Any]:
    return {
        "connection_id": event.connection_id,
        "dedupe_key": event.key,
        "body": event.body,
        "content_type": event.content_type[:128],
        "status": EventStatus.FAILED if event.error else EventStatus.PENDING,
        "error": event.error,
        "attempts": 0,
        "deals": 0,
        "received_at": received_at,
    }


async def store_event(
    session: AsyncSession,
    connection_id: int,
    key: str,
    body: bytes,
    content_type: str,
    *,
    error: str | None = None,
) -> bool:
    """Store the delivery; True when it was new, False when it duplicates a pending one.

    ON CONFLICT DO NOTHING makes a duplicate (and a concurrent duplicate) a no-op on both databases.
    When the earlier event with the same key was already processed, this one is stored as a new
    event under a suffixed key: Bitrix24 events carry no delivery id, so two changes of one deal in
    the same second share a key, and dropping the second would lose a change. Processing an event
    twice is harmless (the mirror ignores what it already has); losing one is not.
    """
    values = _row(IncomingEvent(connection_id, key, body, content_type, error), utcnow())
    statement = (
        dialect_insert(session, InboxEvent)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["connection_id", "dedupe_key"])
    )
    if (await session.execute(statement)).rowcount:  # type: ignore[attr-defined]
        return True
    earlier = await session.scalar(
        select(InboxEvent.status).where(
            InboxEvent.connection_id == connection_id, InboxEvent.dedupe_key == key
        )
    )
    if earlier == EventStatus.PENDING:
        return False
    values["dedupe_key"] = f"{key[:200]}#{secrets.token_hex(8)}"
    await session.execute(dialect_insert(session, InboxEvent).values(**values))
    return True


async def store_events(session: AsyncSession, events: Sequence[IncomingEvent]) -> list[bool]:
    """`store_event` for each, in order, with one INSERT for all that are new: an INSERT per
    delivery was the larger part of a group commit (bench/README.md, issue #14). A row the INSERT
    skipped (its key is stored already, or came earlier in the list) then goes through
    `store_event`, which finds the earlier one and decides as it always has."""
    if not events:
        return []
    received_at = utcnow()
    # One statement with the rows as executemany parameters: SQLAlchemy sends them as multi-row
    # INSERTs ("insertmanyvalues") from one compiled form, where .values([...]) compiled a new
    # statement for every group size (a tenth of the receiver's CPU under a burst).
    table = InboxEvent.__table__
    statement = (
        dialect_insert(session, table)
        .on_conflict_do_nothing(index_elements=["connection_id", "dedupe_key"])
        .returning(table.c.connection_id, table.c.dedupe_key)
    )
    rows = await session.execute(statement, [_row(event, received_at) for event in events])
    inserted = {(row.connection_id, row.dedupe_key) for row in rows}
    outcomes: list[bool] = []
    for event in events:
        if (event.connection_id, event.key) in inserted:
            inserted.discard((event.connection_id, event.key))  # a second one with the key is not new
            outcomes.append(True)
        else:
            outcomes.append(
                await store_event(
                    session, event.connection_id, event.key, event.body, event.content_type, error=event.error
                )
            )
    return outcomes


async def counts_by_status(session: AsyncSession, connection_id: int | None = None) -> dict[str, int]:
    query = select(InboxEvent.status, func.count()).group_by(InboxEvent.status)
    if connection_id is not None:
        query = query.where(InboxEvent.connection_id == connection_id)
    return {status: count for status, count in await session.execute(query)}


async def last_received_at(session: AsyncSession, connection_id: int) -> datetime | None:
    """When the connection's newest delivery arrived (naive on SQLite, where aggregates lose the
    column type; the value is UTC)."""
    return await session.scalar(
        select(func.max(InboxEvent.received_at)).where(InboxEvent.connection_id == connection_id)
    )


async def oldest_pending_at(session: AsyncSession, connection_id: int) -> datetime | None:
    """When the connection's oldest unprocessed delivery arrived (naive on SQLite, as above)."""
    return await session.scalar(
        select(func.min(InboxEvent.received_at)).where(
            InboxEvent.connection_id == connection_id, InboxEvent.status == EventStatus.PENDING
        )
    )


class EventNotFound(NotFound):
    pass


async def list_events(
    session: AsyncSession, *, status: str | None = None, connection: str | None = None, limit: int = 100
) -> list[tuple[InboxEvent, str]]:
    """Newest events first, each with its connection's name, optionally filtered."""
    query = select(InboxEvent, Connection.name).join(Connection, Connection.id == InboxEvent.connection_id)
    if status is not None:
        query = query.where(InboxEvent.status == status)
    if connection is not None:
        query = query.where(Connection.name == connection)
    rows = await session.execute(query.order_by(InboxEvent.id.desc()).limit(limit))
    return [(event, name) for event, name in rows]


async def event_with_connection(session: AsyncSession, event_id: int) -> tuple[InboxEvent, str]:
    """One event and its connection's name."""
    row = (
        await session.execute(
            select(InboxEvent, Connection.name)
            .join(Connection, Connection.id == InboxEvent.connection_id)
            .where(InboxEvent.id == event_id)
        )
    ).first()
    if row is None:
        raise EventNotFound(f"no inbox event with id {event_id}")
    event, name = row
    return event, name


class EventNotRetryable(ValueError):
    pass


async def retry_event(session: AsyncSession, event_id: int) -> InboxEvent:
    """Queue a failed event for the inbox job to parse again: worth doing after upgrading FunnelSync
    with a parser fix (with the same parser it simply fails again, one attempt more).

    `error` is kept until the event is processed again: it is still the last known reason, shown
    beside the pending event the way a deferred event's is, and the processor replaces it either way
    (cleared on success, the new reason on failure). `attempts` keeps counting across retries.
    `processed_at` is cleared: the event is waiting again, not processed."""
    event = await session.get(InboxEvent, event_id)
    if event is None:
        raise EventNotFound(f"no inbox event with id {event_id}")
    if event.status != EventStatus.FAILED:
        raise EventNotRetryable(f"event {event_id} is {event.status}; only failed events are retried")
    event.status, event.processed_at = EventStatus.PENDING, None
    return event


async def retry_events(
    session: AsyncSession, *, connection_id: int | None = None, ids: Sequence[int] | None = None
) -> int:
    """Bulk replay: every failed event matching the filter goes back to pending (as retry_event
    does); returns how many."""
    if ids is not None and not ids:
        return 0
    query = update(InboxEvent).where(InboxEvent.status == EventStatus.FAILED)
    if connection_id is not None:
        query = query.where(InboxEvent.connection_id == connection_id)
    if ids is not None:
        query = query.where(InboxEvent.id.in_(list(ids)))
    result = await session.execute(query.values(status=EventStatus.PENDING, processed_at=None))
    return int(result.rowcount)  # type: ignore[attr-defined]
