"""Prometheus metrics: counters updated where things happen, queue depths read at scrape time."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.outbox.models import OutboxCommand
from app.outbox.statuses import CommandStatus
from app.webhooks.models import EventStatus, InboxEvent
from connectors.http import observe_rate_waits

# One registry per process, not the global default: tests build many apps in one process.
REGISTRY = CollectorRegistry()

EVENTS_RECEIVED = Counter(
    "funnelsync_webhook_events_received_total",
    "Webhook deliveries accepted",
    ["crm", "outcome"],
    registry=REGISTRY,
)
EVENTS_PROCESSED = Counter(
    "funnelsync_inbox_events_processed_total", "Inbox events processed", ["outcome"], registry=REGISTRY
)
PUSH_LATENCY = Histogram(
    "funnelsync_push_latency_seconds",
    "Time from queuing a command to the CRM confirming it",
    ["kind"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)
CRM_ERRORS = Counter(
    "funnelsync_crm_errors_total", "CRM call failures by class", ["error"], registry=REGISTRY
)
RATE_LIMIT_WAIT = Counter(
    "funnelsync_rate_limit_wait_seconds_total",
    "Time spent waiting on our own per-account rate limiter before calling the CRM",
    registry=REGISTRY,
)
WEBHOOKS_IN_FLIGHT = Gauge(
    "funnelsync_webhook_requests_in_flight",
    "Webhook requests being received now (headers read, answer not yet sent)",
    registry=REGISTRY,
)
INBOX_GAVE_WAY = Counter(
    "funnelsync_inbox_gave_way_seconds_total",
    "Time inbox runs waited for this process's busy webhook receiver (app.webhooks.intake)",
    registry=REGISTRY,
)
OUTBOX_DEPTH = Gauge("funnelsync_outbox_commands", "Outbox commands by status", ["status"], registry=REGISTRY)
INBOX_DEPTH = Gauge("funnelsync_inbox_events", "Inbox events by status", ["status"], registry=REGISTRY)

observe_rate_waits(lambda _account, seconds: RATE_LIMIT_WAIT.inc(seconds))


def crm_error(exc: BaseException) -> None:
    CRM_ERRORS.labels(error=type(exc).__name__).inc()


async def render(sessions: async_sessionmaker[AsyncSession]) -> tuple[bytes, str]:
    """The exposition text, with queue depths read from the database now."""
    async with sessions() as session:
        outbox = dict(
            (
                await session.execute(
                    select(OutboxCommand.status, func.count()).group_by(OutboxCommand.status)
                )
            ).all()
        )
        inbox = dict(
            (await session.execute(select(InboxEvent.status, func.count()).group_by(InboxEvent.status))).all()
        )
    for command_status in CommandStatus:
        OUTBOX_DEPTH.labels(status=command_status).set(outbox.get(command_status, 0))
    for event_status in EventStatus:
        INBOX_DEPTH.labels(status=event_status).set(inbox.get(event_status, 0))
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
