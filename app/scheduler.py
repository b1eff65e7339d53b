"""APScheduler 3 wiring: each domain's periodic jobs, safe with several processes on PostgreSQL
(every job takes a lease per connection before it works on it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import leases
from app.config import Settings
from app.connections import health
from app.connections.jobs import refresh_tokens
from app.connections.registry import ConnectorRegistry
from app.connections.repository import active_connections
from app.deals.reconcile import reconcile, record_reconcile_error
from app.funnels.webhook_upkeep import check_webhooks
from app.outbox.delivery import DrainResult, RetrySettings, drain_connection
from app.rules.timers import run_timers
from app.waker import INBOX_JOB, OUTBOX_JOB
from app.webhooks.processor import ProcessResult, process_inbox
from connectors.base import CRMError
from connectors.events import parse_deal_events

log = logging.getLogger("funnelsync.scheduler")


@dataclass
class Runtime:
    """What jobs need: the database, settings and this process's connectors."""

    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    connectors: ConnectorRegistry


async def run_inbox(runtime: Runtime) -> None:
    result = await process_inbox(runtime.sessions, runtime.connectors.get, parse_deal_events)
    if result.processed or result.failed:
        log.info("inbox: %s processed, %s failed, %s deals", result.processed, result.failed, result.deals)


async def run_outbox(runtime: Runtime) -> DrainResult:
    """Deliver due outbox commands of every active connection (each under its own lease)."""
    total = DrainResult()
    async with runtime.sessions() as session:
        records = await active_connections(session)
    retry = RetrySettings.from_settings(runtime.settings)
    for record in records:
        connector = await runtime.connectors.get(record)
        result = await drain_connection(runtime.sessions, record, connector, retry=retry)
        total.delivered += result.delivered
        total.retried += result.retried
        total.dead += result.dead
        total.requests += result.requests
    if total.delivered or total.dead:
        log.info("outbox: %s delivered, %s retried, %s dead", total.delivered, total.retried, total.dead)
    return total


async def run_until_idle(runtime: Runtime) -> tuple[ProcessResult, DrainResult]:
    """Process the inbox and drain due outbox commands until neither has work (`worker --once`)."""
    inbox, outbox = ProcessResult(), DrainResult()
    while True:
        processed = await process_inbox(runtime.sessions, runtime.connectors.get, parse_deal_events)
        drained = await run_outbox(runtime)
        inbox.processed += processed.processed
        inbox.failed += processed.failed
        inbox.deals += processed.deals
        outbox.delivered += drained.delivered
        outbox.dead += drained.dead
        if not (processed.processed or processed.failed or drained.delivered or drained.dead):
            return inbox, outbox


async def run_reconcile(runtime: Runtime) -> None:
    async with runtime.sessions() as session:
        records = await active_connections(session)
    overlap = timedelta(seconds=runtime.settings.reconcile_overlap_seconds)
    for record in records:
        key = f"reconcile:{record.id}"
        if not await leases.acquire(runtime.sessions, key, timedelta(minutes=30)):
            continue
        try:
            connector = await runtime.connectors.get(record)
            await reconcile(runtime.sessions, record.id, connector, overlap=overlap)
            await health.record_success(runtime.sessions, record.id)
        except CRMError as exc:
            await health.record_failure(runtime.sessions, record.id, exc)
            async with runtime.sessions.begin() as session:
                await record_reconcile_error(session, record.id, exc.crm_text)
            log.warning("reconcile of %s failed: %s", record.name, exc.crm_text)
        finally:
            await leases.release(runtime.sessions, key)


async def run_rule_timers(runtime: Runtime) -> None:
    escalations, follow_ups = await run_timers(runtime.sessions)
    if escalations or follow_ups:
        log.info("rules: %s SLA escalations, %s follow-up tasks queued", escalations, follow_ups)


async def run_token_refresh(runtime: Runtime) -> None:
    await refresh_tokens(runtime.sessions, runtime.connectors.get)


async def run_webhook_check(runtime: Runtime) -> None:
    await check_webhooks(runtime.sessions, runtime.settings, runtime.connectors.get)


def build_scheduler(runtime: Runtime) -> AsyncIOScheduler:
    # A webhook wakes the inbox job while it may still be running; APScheduler then logs a warning
    # for the skipped run, which is expected here and only noise.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    scheduler = AsyncIOScheduler(timezone=UTC)
    settings = runtime.settings
    common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
    scheduler.add_job(
        run_inbox, "interval", args=[runtime], seconds=settings.inbox_interval_seconds, id=INBOX_JOB, **common
    )
    scheduler.add_job(
        run_outbox,
        "interval",
        args=[runtime],
        seconds=settings.outbox_interval_seconds,
        id=OUTBOX_JOB,
        **common,
    )
    scheduler.add_job(
        run_reconcile,
        "interval",
        args=[runtime],
        seconds=settings.reconcile_interval_seconds,
        id="reconcile",
        **common,
    )
    # Several processes may run these at once; both are idempotent (a fresh token or a live hook
    # makes the second run a no-op), and connector refreshes are serialised per account.
    scheduler.add_job(
        run_rule_timers,
        "interval",
        args=[runtime],
        seconds=settings.rules_interval_seconds,
        id="rules",
        **common,
    )
    scheduler.add_job(run_token_refresh, "interval", args=[runtime], minutes=5, id="tokens", **common)
    scheduler.add_job(run_webhook_check, "interval", args=[runtime], minutes=10, id="webhooks", **common)
    return scheduler


class SchedulerWaker:
    """The app's Waker (app.waker) when this process runs the scheduler."""

    def __init__(self, scheduler: AsyncIOScheduler) -> None:
        self.scheduler = scheduler

    def wake(self, job_id: str) -> None:
        """Run a job now instead of at its next tick (a webhook just arrived)."""
        if not self.scheduler.running:
            return
        job = self.scheduler.get_job(job_id)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))
