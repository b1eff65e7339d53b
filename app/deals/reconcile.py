"""Reconciliation: catch up on changes the CRM never sent (or we never got) by listing deals.

Incremental runs list deals modified since the cursor minus an overlap window (the CRMs' modify
times are coarse and clocks differ; the mirror ignores what it already has). A full run walks every
deal in ascending id order and, page by page, tombstones local deals in the same id range that the
CRM no longer has — so deletions are found without holding every id in memory. The cursor moves only
once the whole pull is committed: pages come in id order, not modify-time order (paging by modify
time skips a deal modified mid-pull), so the newest time on an early page says nothing about the
deals on later pages, and a run cut off half-way must start again from the old cursor. Each page goes through the one ingest path (mirror +
stage rules, app.deals.ingest) in the transaction that moves the cursor, so a move only reconcile
saw (its webhook was lost) still gets its stage-entry work, whoever runs the reconcile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, cast, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections.models import Connection
from app.db import utcnow
from app.deals.ingest import ingest
from app.deals.models import Deal, SyncState
from connectors.base import CRMConnector, DealSnapshot

DEFAULT_OVERLAP = timedelta(minutes=10)

Progress = Callable[[int], None]


@dataclass
class ReconcileResult:
    full: bool
    deals_seen: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    cursor: datetime | None = None
    entered: int = 0
    queued: int = 0  # CRM commands the stage rules queued (the outbox worker delivers them)


async def get_sync_state(session: AsyncSession, connection_id: int) -> SyncState:
    state = await session.get(SyncState, connection_id)
    if state is None:
        state = SyncState(connection_id=connection_id, deals_seen=0)
        session.add(state)
        await session.flush()
    return state


async def record_reconcile_error(session: AsyncSession, connection_id: int, error: str) -> None:
    """Keep why the last reconcile failed (shown in the connection's status until one succeeds);
    a connection never reconciled has no state to keep it on."""
    state = await session.get(SyncState, connection_id)
    if state is not None:
        state.last_error = error


async def reconcile(
    sessions: async_sessionmaker[AsyncSession],
    connection_id: int,
    connector: CRMConnector,
    *,
    full: bool = False,
    overlap: timedelta = DEFAULT_OVERLAP,
    progress: Progress | None = None,
) -> ReconcileResult:
    async with sessions.begin() as session:
        connection = await session.get(Connection, connection_id)
        if connection is None:
            raise LookupError(f"no connection with id {connection_id}")
        cursor = (await get_sync_state(session, connection_id)).cursor
    full = full or cursor is None
    result = ReconcileResult(full=full, cursor=cursor)
    pages = (
        connector.list_all_deals()
        if full or cursor is None
        else connector.list_deals_modified_since(cursor - overlap)
    )
    previous_max_id = -1
    async for page in pages:
        if page:
            previous_max_id = await _ingest_page(sessions, connection, page, result, previous_max_id)
            if progress is not None:
                progress(len(page))
    await _finish(sessions, connection_id, result, previous_max_id)
    return result


async def _ingest_page(
    sessions: async_sessionmaker[AsyncSession],
    connection: Connection,
    page: list[DealSnapshot],
    result: ReconcileResult,
    previous_max_id: int,
) -> int:
    """Mirror one page (and, in a full pass, tombstone what the CRM no longer has between the
    previous page's last id and this one's); returns the highest id seen so far."""
    async with sessions.begin() as session:
        ingested = await ingest(session, connection, page, source="reconcile")
        if result.full:
            ids = sorted(int(s.id) for s in page)
            result.deleted += await _tombstone_missing_in_range(
                session, connection.id, previous_max_id, ids[-1], {str(i) for i in ids}
            )
            previous_max_id = ids[-1]
        newest = max(s.updated_at for s in page)
        result.cursor = max(result.cursor, newest) if result.cursor else newest
    mirrored = ingested.mirrored
    result.deals_seen += len(page)
    result.created += mirrored.created
    result.updated += mirrored.updated
    result.entered += len(mirrored.entered)
    result.queued += ingested.rules.enqueued
    return previous_max_id


async def _finish(
    sessions: async_sessionmaker[AsyncSession],
    connection_id: int,
    result: ReconcileResult,
    previous_max_id: int,
) -> None:
    """Record the pass: the cursor only moves forward, and only now that every page is in."""
    async with sessions.begin() as session:
        if result.full:
            # Everything above the last id seen is gone from the CRM too.
            result.deleted += await _tombstone_missing_in_range(
                session, connection_id, previous_max_id, None, set()
            )
        state = await get_sync_state(session, connection_id)
        if result.cursor is not None and (state.cursor is None or result.cursor > state.cursor):
            state.cursor = result.cursor
        state.last_run_at = utcnow()
        if result.full:
            state.last_full_at = state.last_run_at
        state.deals_seen = result.deals_seen
        state.last_error = None
        result.cursor = state.cursor


async def _tombstone_missing_in_range(
    session: AsyncSession, connection_id: int, after_id: int, up_to_id: int | None, present: set[str]
) -> int:
    """Tombstone live local deals with after_id < id <= up_to_id that the CRM page did not contain."""
    numeric_id = cast(Deal.crm_deal_id, BigInteger)
    query = select(Deal).where(
        Deal.connection_id == connection_id, Deal.deleted_at.is_(None), numeric_id > after_id
    )
    if up_to_id is not None:
        query = query.where(numeric_id <= up_to_id)
    now = utcnow()
    count = 0
    for deal in await session.scalars(query):
        if deal.crm_deal_id not in present:
            deal.deleted_at = now
            count += 1
    return count
