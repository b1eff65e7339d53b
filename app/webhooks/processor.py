"""Inbox processor: turn stored deliveries into mirrored deals, per connection, in arrival order.

One processor at a time handles a connection (a lease), so its events stay in order even with
several processes on one PostgreSQL; many connections are processed at once, a batch per turn
(app.concurrency), so one portal's backlog or outage never delays another's mirror. Deals an event only names (Bitrix24 sends just the id) are
fetched in batches before the write transaction, so no database lock is held while the CRM answers.
The ingest step (mirror, tombstones, stage rules: app.deals.ingest) and marking the events processed
commit together.

One bad event never stops the inbox: a batch that fails unexpectedly is processed again event by
event (the deals already fetched are reused), so only the event that fails on its own is marked
failed, with the reason; and whatever escapes one connection is logged and the next one goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import leases, metrics
from app.concurrency import ConnectionPool, is_failing
from app.connections import health
from app.connections.models import Connection
from app.db import utcnow
from app.deals.ingest import ingest
from app.webhooks.models import EventStatus, InboxEvent
from connectors.base import CRMConnector, CRMError, DealEvent, DealSnapshot

BATCH = 200
LEASE_TTL = timedelta(minutes=2)
MAX_REASON = 500  # characters of an unexpected exception kept in an event's `error`
log = logging.getLogger("funnelsync.webhooks")

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
    pool: ConnectionPool[int] | None = None,
    keep_going: Callable[[], bool] = lambda: True,
) -> ProcessResult:
    """Process pending events of every connection that has some; returns totals.

    Connections are processed at once, a batch per turn, round robin (app.concurrency; without a
    `pool`, one connection at a time, waited for to the end). One connection's
    trouble never stops the others: whatever escapes a connection's turn is logged and its events
    stay pending. When `keep_going` says no after a turn, the connection gets no further turn in
    this run (its events wait for the next)."""
    total = ProcessResult()
    async with sessions() as session:
        pending = exists().where(
            InboxEvent.connection_id == Connection.id, InboxEvent.status == EventStatus.PENDING
        )
        rows = await session.execute(
            select(Connection.id, Connection.consecutive_failures, Connection.last_failure_class)
            .where(pending)
            .order_by(Connection.id)
        )
        connection_ids, failing = [], []
        for connection_id, failures, failure_class in rows:
            connection_ids.append(connection_id)
            if is_failing(failures, failure_class):
                failing.append(connection_id)

    async def turn(connection_id: int) -> bool:
        try:
            result, more = await _process_turn(sessions, connection_id, connector_for, parse, batch)
        except Exception:
            log.exception("inbox: processing connection %s failed; its events stay pending", connection_id)
            return False
        _add(total, result)
        return more and keep_going()

    # A connection whose CRM calls are failing gets its turn outside the slots (app.concurrency).
    if pool is not None:
        await pool.run(connection_ids, turn, failing=failing)
        return total
    one_off = ConnectionPool[int](slots=1)
    await one_off.run(connection_ids, turn, failing=failing)
    await one_off.wait_idle()  # a direct call processes everything it can before it returns
    return total


async def _process_turn(
    sessions: async_sessionmaker[AsyncSession],
    connection_id: int,
    connector_for: ConnectorFor,
    parse: EventParser,
    batch: int,
) -> tuple[ProcessResult, bool]:
    """One batch of one connection's pending events, under its lease; whether more may be pending
    (a full batch that the CRM did not defer)."""
    key = f"inbox:{connection_id}"
    if not await leases.acquire(sessions, key, LEASE_TTL):
        return ProcessResult(), False  # another process is on it
    try:
        result = await _process_connection_batch(sessions, connection_id, connector_for, parse, batch)
    finally:
        await leases.release(sessions, key)
    return result, result.processed + result.failed >= batch and not result.deferred


def _add(total: ProcessResult, part: ProcessResult) -> None:
    total.processed += part.processed
    total.failed += part.failed
    total.deals += part.deals
    total.transitions += part.transitions
    total.deferred += part.deferred


@dataclass
class _Parsed:
    """A batch's events as the parser read them: their deal events, or why they cannot be read."""

    deal_events: dict[int, list[DealEvent]] = field(default_factory=dict)  # inbox event id -> events
    failures: dict[int, str] = field(default_factory=dict)  # inbox event id -> reason


@dataclass
class _Changes:
    """What parsed events ask of the mirror."""

    snapshots: list[DealSnapshot] = field(default_factory=list)
    deletions: list[tuple[str, datetime]] = field(default_factory=list)
    to_fetch: list[str] = field(default_factory=list)  # deals an event only names (Bitrix24: all)


@dataclass
class _FetchedDeals:
    """Deals already read from the CRM for this batch, so that processing the batch again event by
    event (after an unexpected error) does not ask the CRM a second time."""

    asked: set[str] = field(default_factory=set)
    deals: dict[str, DealSnapshot] = field(default_factory=dict)


class _CRMUnavailable(Exception):
    """The CRM could not be asked for the deals the events name: the events wait for the next run."""


async def _process_connection_batch(
    sessions: async_sessionmaker[AsyncSession],
    connection_id: int,
    connector_for: ConnectorFor,
    parse: EventParser,
    batch: int,
) -> ProcessResult:
    """The connection's next `batch` pending events, in one go; if anything unexpected goes wrong,
    again one event at a time, so one bad event fails alone and the good ones are still mirrored."""
    connection, events = await _load_batch(sessions, connection_id, batch)
    if connection is None or not events:
        return ProcessResult()
    fetched = _FetchedDeals()
    try:
        return await _process_events(sessions, connection, events, connector_for, parse, fetched)
    except Exception:
        log.exception(
            "inbox: a batch of %d events of connection %s failed; retrying them one by one",
            len(events),
            connection_id,
        )
    return await _process_one_by_one(sessions, connection, events, connector_for, parse, fetched)


async def _process_one_by_one(
    sessions: async_sessionmaker[AsyncSession],
    connection: Connection,
    events: list[InboxEvent],
    connector_for: ConnectorFor,
    parse: EventParser,
    fetched: _FetchedDeals,
) -> ProcessResult:
    """Each event in its own transaction, in arrival order; one that still fails is marked failed
    with the reason. Stops at the first event deferred (the CRM cannot be asked): the rest wait."""
    total = ProcessResult()
    for event in events:
        try:
            result = await _process_events(sessions, connection, [event], connector_for, parse, fetched)
        except Exception as exc:
            log.exception("inbox: event %s of connection %s failed", event.id, connection.id)
            result = await _write(
                sessions, connection, _Parsed(failures={event.id: _reason(exc)}), _Changes()
            )
        _add(total, result)
        if result.deferred:
            break
    return total


def _reason(exc: Exception) -> str:
    """What an event's `error` says about an unexpected exception: its type and message, truncated."""
    text = f"processing failed: {type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


async def _load_batch(
    sessions: async_sessionmaker[AsyncSession], connection_id: int, batch: int
) -> tuple[Connection | None, list[InboxEvent]]:
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
    return connection, events


async def _process_events(
    sessions: async_sessionmaker[AsyncSession],
    connection: Connection,
    events: list[InboxEvent],
    connector_for: ConnectorFor,
    parse: EventParser,
    fetched: _FetchedDeals,
) -> ProcessResult:
    """Parse the events, fetch the deals they only name, then mirror them and mark them done."""
    parsed = _parse_events(connection.crm, events, parse)
    changes = _changes(parsed.deal_events)
    deferred = 0
    if changes.to_fetch:
        try:
            changes.snapshots.extend(
                await _fetch_named_deals(sessions, connection, connector_for, changes.to_fetch, fetched)
            )
        except _CRMUnavailable as exc:
            await _defer(sessions, list(parsed.deal_events), str(exc))
            deferred = len(parsed.deal_events)
            parsed.deal_events.clear()
    result = await _write(sessions, connection, parsed, changes)
    result.deferred = deferred
    return result


def _parse_events(crm: str, events: list[InboxEvent], parse: EventParser) -> _Parsed:
    parsed = _Parsed()
    for event in events:
        try:
            parsed.deal_events[event.id] = parse(crm, event.body, event.content_type)
        except ValueError as exc:  # WebhookParseError: stored, acknowledged, shown as failed
            parsed.failures[event.id] = f"cannot parse webhook body: {exc}"
    return parsed


def _changes(deal_events: dict[int, list[DealEvent]]) -> _Changes:
    changes = _Changes()
    for events in deal_events.values():
        for deal_event in events:
            if deal_event.kind == "delete":
                changes.deletions.append((deal_event.deal_id, deal_event.occurred_at or utcnow()))
            elif deal_event.snapshot is not None:
                changes.snapshots.append(deal_event.snapshot)
            else:
                changes.to_fetch.append(deal_event.deal_id)
    return changes


async def _fetch_named_deals(
    sessions: async_sessionmaker[AsyncSession],
    connection: Connection,
    connector_for: ConnectorFor,
    deal_ids: list[str],
    fetched: _FetchedDeals,
) -> list[DealSnapshot]:
    """The named deals as the CRM has them now (one batched read of those not read yet). Raises
    _CRMUnavailable when the CRM could not be asked (recorded on the connection's health)."""
    wanted = sorted(set(deal_ids), key=_numeric_first)
    missing = [deal_id for deal_id in wanted if deal_id not in fetched.asked]
    if missing:
        try:
            connector = await connector_for(connection)
            deals = await connector.get_deals(missing)
        except CRMError as exc:
            metrics.crm_error(exc)
            await health.record_failure(sessions, connection.id, exc)
            raise _CRMUnavailable(f"fetching deals failed: {exc.crm_text}") from exc
        await health.record_success(sessions, connection.id)
        fetched.asked.update(missing)
        fetched.deals.update((deal.id, deal) for deal in deals)
    # A deal deleted before we fetched it is simply absent: nothing to mirror.
    return [fetched.deals[deal_id] for deal_id in wanted if deal_id in fetched.deals]


async def _defer(sessions: async_sessionmaker[AsyncSession], event_ids: list[int], error: str) -> None:
    """Leave the events pending; count the attempt and keep the CRM's words for the API."""
    async with sessions.begin() as session:
        await session.execute(
            update(InboxEvent)
            .where(InboxEvent.id.in_(event_ids))
            .values(attempts=InboxEvent.attempts + 1, error=error)
        )


async def _write(
    sessions: async_sessionmaker[AsyncSession], connection: Connection, parsed: _Parsed, changes: _Changes
) -> ProcessResult:
    """Mirror the changes and mark the events processed (or failed), all in one transaction."""
    result = ProcessResult()
    now = utcnow()
    async with sessions.begin() as session:
        if parsed.deal_events:
            ingested = await ingest(
                session, connection, changes.snapshots, deletions=changes.deletions, source="webhook"
            )
            result.deals = ingested.mirrored.created + ingested.mirrored.updated
            result.transitions = len(ingested.mirrored.transitions)
            # One UPDATE per number of deals an event carried (nearly always one), not one per event.
            by_deals: dict[int, list[int]] = {}
            for event_id, deal_events in parsed.deal_events.items():
                by_deals.setdefault(len(deal_events), []).append(event_id)
            for deals, event_ids in by_deals.items():
                await _mark(session, event_ids, now, status=EventStatus.PROCESSED, error=None, deals=deals)
            result.processed = len(parsed.deal_events)
        for event_id, error in parsed.failures.items():
            await _mark(session, [event_id], now, status=EventStatus.FAILED, error=error)
        result.failed = len(parsed.failures)
    metrics.EVENTS_PROCESSED.labels(outcome=EventStatus.PROCESSED).inc(result.processed)
    metrics.EVENTS_PROCESSED.labels(outcome=EventStatus.FAILED).inc(result.failed)
    return result


async def _mark(
    session: AsyncSession,
    event_ids: list[int],
    now: datetime,
    *,
    status: EventStatus,
    error: str | None,
    **extra: int,
) -> None:
    if error is not None:
        # PostgreSQL text cannot hold NUL, and a reason that cannot be stored would keep the event
        # pending forever.
        error = error.replace("\x00", "\\x00")
    await session.execute(
        update(InboxEvent)
        .where(InboxEvent.id.in_(event_ids))
        .values(status=status, processed_at=now, error=error, attempts=InboxEvent.attempts + 1, **extra)
    )


def _numeric_first(value: str) -> tuple[int, int, str]:
    """Sort key: numeric ids in numeric order, anything else after them. Never raises: int() would
    on '²' (a digit to str.isdigit) or on an id of 4,301 digits; equal-length digit strings without
    leading zeros compare like their numbers."""
    if value.isascii() and value.isdigit():
        digits = value.lstrip("0")
        return (0, len(digits), digits)
    return (1, 0, value)
