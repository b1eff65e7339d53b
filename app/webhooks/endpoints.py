"""GET /api/events: what arrived, what failed and why."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import select

from app.api.deps import SessionsDep
from app.connections.models import Connection
from app.webhooks.models import InboxEvent
from app.webhooks.schemas import InboxEventOut

router = APIRouter(prefix="/events", tags=["events"])

PREVIEW = 2000


@router.get("")
async def list_events(
    sessions: SessionsDep,
    status: Literal["pending", "processed", "failed"] | None = None,
    connection: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[InboxEventOut]:
    query = select(InboxEvent, Connection.name).join(Connection, Connection.id == InboxEvent.connection_id)
    if status is not None:
        query = query.where(InboxEvent.status == status)
    if connection is not None:
        query = query.where(Connection.name == connection)
    async with sessions() as session:
        rows = await session.execute(query.order_by(InboxEvent.id.desc()).limit(limit))
        return [
            InboxEventOut(
                id=e.id,
                connection=name,
                status=e.status,
                error=e.error,
                attempts=e.attempts,
                deals=e.deals,
                received_at=e.received_at,
                processed_at=e.processed_at,
                content_type=e.content_type,
                body_preview=e.body[:PREVIEW].decode("utf-8", errors="replace"),
            )
            for e, name in rows
        ]
