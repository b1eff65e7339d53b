"""/api/events: what arrived, what failed and why; send failed events back to the processor."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi import status as http_status

from app.api.deps import SessionsDep
from app.connections import service as connections
from app.waker import INBOX_JOB, WakerDep
from app.webhooks import service
from app.webhooks.models import EventStatus, InboxEvent
from app.webhooks.schemas import EventRetry, EventRetryResult, InboxEventOut
from connectors.http import redact

router = APIRouter(prefix="/events", tags=["events"])

PREVIEW = 2000


def event_out(event: InboxEvent, connection: str) -> InboxEventOut:
    return InboxEventOut(
        id=event.id,
        connection=connection,
        status=event.status,
        error=redact(event.error) if event.error else event.error,  # older rows: recorded unredacted
        attempts=event.attempts,
        deals=event.deals,
        received_at=event.received_at,
        processed_at=event.processed_at,
        content_type=event.content_type,
        body_preview=service.body_preview(event.body[:PREVIEW]),
    )


@router.get("")
async def list_events(
    sessions: SessionsDep,
    status: EventStatus | None = None,
    connection: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[InboxEventOut]:
    async with sessions() as session:
        rows = await service.list_events(session, status=status, connection=connection, limit=limit)
        return [event_out(e, name) for e, name in rows]


@router.post("/retry")
async def retry_many(body: EventRetry, sessions: SessionsDep, waker: WakerDep) -> EventRetryResult:
    async with sessions.begin() as session:
        connection_id = None
        if body.connection is not None:
            connection_id = (await connections.get_connection(session, body.connection)).id
        count = await service.retry_events(session, connection_id=connection_id, ids=body.ids)
    if count:
        waker.wake(INBOX_JOB)
    return EventRetryResult(retried=count)


@router.post("/{event_id}/retry")
async def retry_one(event_id: int, sessions: SessionsDep, waker: WakerDep) -> InboxEventOut:
    async with sessions.begin() as session:
        try:
            event = await service.retry_event(session, event_id)
        except service.EventNotRetryable as exc:
            raise HTTPException(http_status.HTTP_409_CONFLICT, str(exc)) from exc
        event, name = await service.event_with_connection(session, event.id)
        out = event_out(event, name)
    waker.wake(INBOX_JOB)
    return out
