"""The operations overview (every connection's health and queues) and the failure lists."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import LargeBinary, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.funnels import load_funnel
from app.analytics.models import DailyLiveDeals
from app.analytics.schemas import (
    ConnectionOverview,
    FailedCommand,
    FailedEvent,
    Failures,
    FunnelSummary,
    Overview,
)
from app.connections.models import Connection, ConnectionSwitch
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
    # Live deals per funnel from the counts the triggers on deals keep (rows per stage and day),
    # not by reading every deal.
    live = (
        select(DailyLiveDeals.funnel_id, func.sum(DailyLiveDeals.deals).label("deals"))
        .group_by(DailyLiveDeals.funnel_id)
        .subquery()
    )
    funnel_rows = await session.execute(
        select(Funnel, func.coalesce(live.c.deals, 0))
        .join(live, live.c.funnel_id == Funnel.id, isouter=True)
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
                deals=int(deals),
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


# --- the summary strip -----------------------------------------------------------------------------

FAILING_STATES = ("degraded", "unreachable", "paused")


@dataclass(frozen=True)
class Summary:
    """The strip above the connection cards: what needs a person, each with where it is listed."""

    late_deals: int
    late_by_funnel: dict[int, int]  # funnel id -> live deals past their stage's SLA
    dead_letters: int
    failing: list[tuple[int, str, str]]  # (connection id, name, health state) not active
    # connection id -> minutes until its first reconcile (0: due now) while it has had none
    first_reconcile_in: dict[int, int] = field(default_factory=dict)

    @property
    def late_funnel(self) -> int | None:
        """The funnel with the most late deals: where the strip's link goes."""
        return max(self.late_by_funnel, key=lambda f: self.late_by_funnel[f]) if self.late_by_funnel else None


async def late_deals(session: AsyncSession, now: datetime) -> dict[int, int]:
    """Live deals past their stage's SLA, per funnel (funnels with none left out); one count per
    funnel over its SLA stages (the SLA comes from the template, not the database)."""
    funnel_ids = list(await session.scalars(select(Funnel.id).order_by(Funnel.id)))
    late: dict[int, int] = {}
    for funnel_id in funnel_ids:
        ctx = await load_funnel(session, funnel_id)
        past = [
            and_(Deal.stage_id == s.id, Deal.stage_entered_at < now - timedelta(seconds=s.sla_seconds))
            for s in ctx.stages
            if s.sla_seconds is not None
        ]
        if not past:
            continue
        count = await session.scalar(
            select(func.count()).where(Deal.funnel_id == funnel_id, Deal.deleted_at.is_(None), or_(*past))
        )
        if count:
            late[funnel_id] = int(count)
    return late


def first_reconcile_eta(record: Connection, interval_seconds: float, now: datetime) -> int:
    """Minutes until a connection that has not been reconciled yet gets its first run: the
    scheduler runs reconcile every `interval_seconds`, so within one interval of the connection's
    creation (0: due now, e.g. right after the service started)."""
    created = record.created_at if record.created_at.tzinfo else record.created_at.replace(tzinfo=now.tzinfo)
    left = (created + timedelta(seconds=interval_seconds) - now).total_seconds()
    return max(math.ceil(left / 60), 0)


async def summary(session: AsyncSession, data: Overview, reconcile_interval_seconds: float) -> Summary:
    now = data.generated_at
    late = await late_deals(session, now)
    records = {r.id: r for r in await list_connections(session)}
    failing = [
        (c.id, c.health.name, str(c.health.health.state))
        for c in data.connections
        if c.health.health.state in FAILING_STATES or c.health.status == ConnectionSwitch.PAUSED
    ]
    eta = {
        c.id: first_reconcile_eta(records[c.id], reconcile_interval_seconds, now)
        for c in data.connections
        if c.health.last_reconcile_at is None and c.id in records
    }
    return Summary(
        late_deals=sum(late.values()),
        late_by_funnel=late,
        dead_letters=sum(c.dead_letters for c in data.connections),
        failing=failing,
        first_reconcile_in=eta,
    )


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
