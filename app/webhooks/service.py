"""Inbox: durable storage of webhook deliveries, and reading it back for the API and dashboard."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.webhooks.models import InboxEvent


def dedupe_key(event_keys: Sequence[str], body: bytes) -> str:
    """One key per delivery: the parsed events' own keys when we have them (a CRM re-sending the
    same change yields the same key even if volatile auth fields differ), else the body's hash."""
    material = "\n".join(sorted(event_keys)).encode() if event_keys else body
    return hashlib.sha256(material).hexdigest()


async def store_event(
    session: AsyncSession,
    connection_id: int,
    key: str,
    body: bytes,
    content_type: str,
    *,
    error: str | None = None,
) -> bool:
    """Insert the delivery unless its key is already stored; True when it was new.

    ON CONFLICT DO NOTHING makes duplicates (and concurrent duplicates) a no-op on both databases.
    """
    values = {
        "connection_id": connection_id,
        "dedupe_key": key,
        "body": body,
        "content_type": content_type[:128],
        "status": "failed" if error else "pending",
        "error": error,
        "attempts": 0,
        "deals": 0,
        "received_at": utcnow(),
    }
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(InboxEvent)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["connection_id", "dedupe_key"])
    )
    result = await session.execute(statement)
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def counts_by_status(session: AsyncSession, connection_id: int | None = None) -> dict[str, int]:
    query = select(InboxEvent.status, func.count()).group_by(InboxEvent.status)
    if connection_id is not None:
        query = query.where(InboxEvent.connection_id == connection_id)
    return {status: count for status, count in await session.execute(query)}
