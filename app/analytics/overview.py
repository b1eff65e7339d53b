"""The operations overview (every connection's health and queues) and the failure lists."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.schemas import (
    ConnectionOverview,
    FailedCommand,
    FailedEvent,
    Failures,
    FunnelSummary,
    Overview,
)
from app.connections.models import Connection
from app.connections.service import list_connections
from app.connections.status import connection_status
from app.db import utcnow
from app.deals.models import Deal
from app.funnels.models import Funnel
from app.outbox.models import OutboxCommand
from app.webhooks.models import InboxEvent

OUTBOX_STATUSES = ("pending", "failed", "dead", "done")
BODY_PREVIEW_BYTES = 400


async def overview(session: AsyncSession, now: datetime | None = None) -> Overview:
    records = await list_connections(session)
    outbox: dict[int, dict[str, int]] = {r.id: dict.fromkeys(OUTBOX_STATUSES, 0) for r in records}
    rows = await session.execute(
        select(OutboxCommand.connection_id, OutboxCommand.status, func.count()).group_by(
            OutboxCommand.connection_id, OutboxCommand.status
        )
    )
    for connection_id, status, count in rows:
        outbox.setdefault(connection_id, {})[status] = count
    funnel_rows = await session.execute(
        select(Funnel, func.count(Deal.id))
        .join(Deal, (Deal.funnel_id == Funnel.id) & Deal.deleted_at.is_(None), isouter=True)
        .group_by(Funnel.id)
        .order_by(Funnel.name, Funnel.id)
    )
    funnels: dict[int, list[FunnelSummary]] = {}
    names = {r.id: r.name for r in records}
    for funnel, deals in funnel_rows:
        funnels.setdefault(funnel.connection_id, []).append(
            FunnelSummary(
                id=funnel.id,
                name=funnel.name,
                template_key=funnel.template_key,
                connection=names.get(funnel.connection_id, "?"),
                deals=deals,
            )
        )
    connections = [
        ConnectionOverview(
            id=record.id,
            health=await connection_status(session, record),
            outbox=outbox[record.id],
            dead_letters=outbox[record.id].get("dead", 0),
            funnels=funnels.get(record.id, []),
        )
        for record in records
    ]
    return Overview(connections=connections, generated_at=now or utcnow())


def body_preview(body: bytes) -> str:
    text = body[:BODY_PREVIEW_BYTES].decode("utf-8", errors="replace")
    return text + ("…" if len(body) > BODY_PREVIEW_BYTES else "")


async def failures(session: AsyncSession, limit: int = 200) -> Failures:
    # Only the columns shown, and only the head of each body: bodies can be up to a megabyte.
    events = await session.execute(
        select(
            InboxEvent.id,
            Connection.name,
            InboxEvent.received_at,
            InboxEvent.attempts,
            InboxEvent.error,
            func.substr(InboxEvent.body, 1, BODY_PREVIEW_BYTES + 1, type_=LargeBinary),
        )
        .join(Connection, Connection.id == InboxEvent.connection_id)
        .where(InboxEvent.status == "failed")
        .order_by(InboxEvent.id.desc())
        .limit(limit)
    )
    commands = await session.execute(
        select(OutboxCommand, Connection.name)
        .join(Connection, Connection.id == OutboxCommand.connection_id)
        .where(OutboxCommand.status.in_(["failed", "dead"]))
        .order_by(OutboxCommand.id.desc())
        .limit(limit)
    )
    return Failures(
        events=[
            FailedEvent(
                id=event_id,
                connection=name,
                received_at=received_at,
                attempts=attempts,
                error=error,
                body_preview=body_preview(bytes(head or b"")),
            )
            for event_id, name, received_at, attempts, error, head in events
        ],
        commands=[
            FailedCommand(
                id=c.id,
                connection=name,
                deal_id=c.deal_id,
                kind=c.kind,
                status=c.status,
                attempts=c.attempts,
                last_error=c.last_error,
                next_attempt_at=c.next_attempt_at,
                created_at=c.created_at,
            )
            for c, name in commands
        ],
        limit=limit,
    )
