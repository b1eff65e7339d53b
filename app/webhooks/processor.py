"""Inbox processor: turn stored deliveries into mirrored deals, per connection, in arrival order.

One processor at a time handles a connection (a lease), so its events stay in order even with
several processes on one PostgreSQL. Deals an event only names (Bitrix24 sends just the id) are
fetched in batches before the write transaction, so no database lock is held while the CRM answers.
The ingest step (mirror, tombstones, stage rules: app.deals.ingest) and marking the events processed
commit together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import leases, metrics
from app.connections import health
from app.connections.models import Connection
from app.db import utcnow
from app.deals.ingest import ingest
from app.webhooks.models import EventStatus, InboxEvent
from connectors.base import CRMConnector, CRMError, DealEvent, DealSnapshot

BATCH = 200
LEASE_TTL = timedelta(minutes=2)

ConnectorFor = Callable[[Connection], Awaitable[CRMConnector]]
EventParser = Callable[[str, bytes, str], list[DealEvent]]


@dataclass
class ProcessResult:
    processed: int = 0
    failed: int = 0
    deals: int = 0
    transitions: int = 0
    deferred: int = 0  # left pending because the CRM could not be asked (retried next run)


async def process_inbox(
    sessions: async_sessionmaker[AsyncSession],
    connector_for: ConnectorFor,
    parse: EventParser,
    *,
    batch: int = BATCH,
) -> ProcessResult:
    """Process pending events of every connection that has some; returns totals."""
    total = ProcessResult()
    async with sessions() as session:
        connection_ids = list(
            await session.scalars(
                select(InboxEvent.connection_id).where(InboxEvent.status == EventStatus.PENDING).distinct()
            )
        )
    for connection_id in connection_ids:
        key = f"inbox:{connection_id}"
        if not await leases.acquire(sessions, key, LEASE_TTL):
            continue  # another process is on it
        try:
            while True:
                result = await _process_connection_batch(sessions, connection_id, connector_for, parse, batch)
                _add(total, result)
                if result.processed + result.failed < batch or result.deferred:
                    break
        finally:
            await leases.release(sessions, key)
    return total


def _add(total: ProcessResult, part: ProcessResult) -> None:
    total.processed += part.processed
    total.failed += part.failed
    total.deals += part.deals
    total.transitions += part.transitions
    total.deferred += part.deferred


async def _process_connection_batch(
    sessions: async_sessionmaker[AsyncSession],
    connection_id: int,
    connector_for: ConnectorFor,
    parse: EventParser,
    batch: int,
) -> ProcessResult:
    result = ProcessResult()
    async with sessions() as session:
        connection = await session.get(Connection, connection_id)
        events = list(
            await session.scalars(
                select(InboxEvent)
                .where(InboxEvent.connection_id == connection_id, InboxEvent.status == EventStatus.PENDING)
                .order_by(InboxEvent.id)
                .limit(batch)
            )
        )
    if connection is None or not events:
        return result

    parsed: dict[int, list[DealEvent]] = {}
    failures: dict[int, str] = {}
    for event in events:
        try:
            parsed[event.id] = parse(connection.crm, event.body, event.content_type)
        except ValueError as exc:  # WebhookParseError: stored, acknowledged, shown as failed
            failures[event.id] = f"cannot parse webhook body: {exc}"

    snapshots: list[DealSnapshot] = []
    deletions: list[tuple[str, datetime]] = []
    to_fetch: list[str] = []
    for deal_events in parsed.values():
        for deal_event in deal_events:
            if deal_event.kind == "delete":
                deletions.append((deal_event.deal_id, deal_event.occurred_at or utcnow()))
            elif deal_event.snapshot is not None:
                snapshots.append(deal_event.snapshot)
            else:
                to_fetch.append(deal_event.deal_id)
    if to_fetch:
        try:
            connector = await connector_for(connection)
            fetched = await connector.get_deals(sorted(set(to_fetch), key=_numeric_first))
        except CRMError as exc:
            metrics.crm_error(exc)
            await health.record_failure(sessions, connection_id, exc)
            # Leave the events pending; count the attempt and keep the CRM's words for the API.
            async with sessions.begin() as session:
                await session.execute(
                    update(InboxEvent)
                    .where(InboxEvent.id.in_(list(parsed)))
                    .values(attempts=InboxEvent.attempts + 1, error=f"fetching deals failed: {exc.crm_text}")
                )
            result.deferred = len(parsed)
            parsed.clear()
        else:
            await health.record_success(sessions, connection_id)
            snapshots.extend(fetched)
            # A deal deleted before we fetched it is simply absent: nothing to mirror.

    now = utcnow()
    async with sessions.begin() as session:
        if parsed:
            ingested = await ingest(session, connection, snapshots, deletions=deletions, source="webhook")
            mirrored = ingested.mirrored
            result.deals = mirrored.created + mirrored.updated
            result.transitions = len(mirrored.transitions)
            for event_id, deal_events in parsed.items():
                await session.execute(
                    update(InboxEvent)
                    .where(InboxEvent.id == event_id)
                    .values(
                        status=EventStatus.PROCESSED,
                        processed_at=now,
                        error=None,
                        attempts=InboxEvent.attempts + 1,
                        deals=len(deal_events),
                    )
                )
            result.processed = len(parsed)
        for event_id, error in failures.items():
            await session.execute(
                update(InboxEvent)
                .where(InboxEvent.id == event_id)
                .values(
                    status=EventStatus.FAILED, error=error, processed_at=now, attempts=InboxEvent.attempts + 1
                )
            )
        result.failed = len(failures)
    metrics.EVENTS_PROCESSED.labels(outcome=EventStatus.PROCESSED).inc(result.processed)
    metrics.EVENTS_PROCESSED.labels(outcome=EventStatus.FAILED).inc(result.failed)
    return result


def _numeric_first(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (0, value)
