"""/api/events: what arrived, what failed and why; send failed events back to the processor."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import status as http_status
from sqlalchemy import select

from app.api.deps import SessionsDep
from app.connections import service as connections
from app.connections.models import Connection
from app.scheduler import INBOX_JOB, wake
from app.webhooks import service
from app.webhooks.models import InboxEvent
from app.webhooks.schemas import EventRetry, EventRetryResult, InboxEventOut

router = APIRouter(prefix="/events", tags=["events"])

PREVIEW = 2000


def event_out(event: InboxEvent, connection: str) -> InboxEventOut:
    return InboxEventOut(
        id=event.id,
        connection=connection,
        status=event.status,
        error=event.error,
        attempts=event.attempts,
        deals=event.deals,
        received_at=event.received_at,
        processed_at=event.processed_at,
        content_type=event.content_type,
        body_preview=event.body[:PREVIEW].decode("utf-8", errors="replace"),
    )


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
        return [event_out(e, name) for e, name in rows]


@router.post("/retry")
async def retry_many(body: EventRetry, request: Request, sessions: SessionsDep) -> EventRetryResult:
    async with sessions.begin() as session:
        connection_id = None
        if body.connection is not None:
            connection_id = (await connections.get_connection(session, body.connection)).id
        count = await service.retry_events(session, connection_id=connection_id, ids=body.ids)
    if count:
        wake(getattr(request.app.state, "scheduler", None), INBOX_JOB)
    return EventRetryResult(retried=count)


@router.post("/{event_id}/retry")
async def retry_one(event_id: int, request: Request, sessions: SessionsDep) -> InboxEventOut:
    async with sessions.begin() as session:
        try:
            event = await service.retry_event(session, event_id)
        except service.EventNotRetryable as exc:
            raise HTTPException(http_status.HTTP_409_CONFLICT, str(exc)) from exc
        connection = await session.get(Connection, event.connection_id)
        assert connection is not None
        out = event_out(event, connection.name)
    wake(getattr(request.app.state, "scheduler", None), INBOX_JOB)
    return out
