"""The operations overview (every connection's health and queues) and the failure lists."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

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
from app.connections.service import get_connection, list_connections
from app.db import utcnow
from app.deals.models import Deal
from app.funnels.models import Funnel
from app.outbox.models import OutboxCommand
from app.outbox.statuses import KINDS, RETRYABLE_STATUSES, CommandStatus
from app.status.connection import connection_status
from app.webhooks.models import EventStatus, InboxEvent
from app.webhooks.service import body_preview as redacted_preview

OUTBOX_STATUSES = (CommandStatus.PENDING, CommandStatus.FAILED, CommandStatus.DEAD, CommandStatus.DONE)
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
            dead_letters=outbox[record.id].get(CommandStatus.DEAD, 0),
            funnels=funnels.get(record.id, []),
        )
        for record in records
    ]
    return Overview(connections=connections, generated_at=now or utcnow())


def body_preview(body: bytes) -> str:
    text = redacted_preview(body[:BODY_PREVIEW_BYTES])
    return text + ("…" if len(body) > BODY_PREVIEW_BYTES else "")


class BadFilter(ValueError):
    """A filter value the failure lists do not know; the message names the ones they do."""


def check_filter(kind: str | None, status: str | None) -> None:
    """BadFilter unless `kind` is an outbox command kind and `status` failed or dead (None: any)."""
    if kind is not None and kind not in KINDS:
        raise BadFilter(f"unknown command kind {kind!r}; one of: {', '.join(KINDS)}")
    if status is not None and status not in RETRYABLE_STATUSES:
        raise BadFilter(f"unknown status {status!r}; one of: {', '.join(RETRYABLE_STATUSES)}")


@dataclass(frozen=True)
class FailureFilter:
    """What the failures page narrows its lists to, as the operator chose it; None means all.

    The connection narrows both lists; kind and status only apply to commands (a failed inbox event
    has neither)."""

    connection: str | None = None
    kind: str | None = None
    status: str | None = None
    connection_id: int | None = None  # resolved from `connection`

    def params(self) -> Iterator[tuple[str, str]]:
        """The chosen values as (name, value) pairs: hidden form fields and the query string."""
        for name in ("connection", "kind", "status"):
            value = getattr(self, name)
            if value is not None:
                yield name, value

    def query(self, **extra: int) -> str:
        """The filter (and `extra`) as a query string, for the redirect after a retry."""
        return urlencode([*self.params(), *((k, str(v)) for k, v in extra.items())])

    @property
    def active(self) -> bool:
        return (self.connection, self.kind, self.status) != (None, None, None)


async def failure_filter(
    session: AsyncSession, connection: str = "", kind: str = "", status: str = ""
) -> FailureFilter:
    """Read the filter from form or query strings, where "" means all (so a connection may be named
    "all"). BadFilter for an unknown kind or status, ConnectionNotFound (a NotFound) for an unknown
    connection name; nothing is written either way."""
    check_filter(kind or None, status or None)
    connection_id = (await get_connection(session, connection)).id if connection else None
    return FailureFilter(connection or None, kind or None, status or None, connection_id)


async def failures(
    session: AsyncSession,
    limit: int = 200,
    *,
    connection_id: int | None = None,
    kind: str | None = None,
    status: str | None = None,
) -> Failures:
    """Failed inbox events and failed or dead commands, newest first, at most `limit` of each.

    `connection_id` narrows both lists; `kind` and `status` (failed or dead) narrow the commands."""
    check_filter(kind, status)
    # Only the columns shown, and only the head of each body: bodies can be up to a megabyte.
    event_query = (
        select(
            InboxEvent.id,
            Connection.name,
            InboxEvent.received_at,
            InboxEvent.attempts,
            InboxEvent.error,
            func.substr(InboxEvent.body, 1, BODY_PREVIEW_BYTES + 1, type_=LargeBinary),
        )
        .join(Connection, Connection.id == InboxEvent.connection_id)
        .where(InboxEvent.status == EventStatus.FAILED)
    )
    command_query = (
        select(OutboxCommand, Connection.name)
        .join(Connection, Connection.id == OutboxCommand.connection_id)
        .where(OutboxCommand.status.in_([status] if status else RETRYABLE_STATUSES))
    )
    if connection_id is not None:
        event_query = event_query.where(InboxEvent.connection_id == connection_id)
        command_query = command_query.where(OutboxCommand.connection_id == connection_id)
    if kind is not None:
        command_query = command_query.where(OutboxCommand.kind == kind)
    events = await session.execute(event_query.order_by(InboxEvent.id.desc()).limit(limit))
    commands = await session.execute(command_query.order_by(OutboxCommand.id.desc()).limit(limit))
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
