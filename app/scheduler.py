"""APScheduler 3 wiring: each domain's periodic jobs, safe with several processes on PostgreSQL
(every job takes a lease per connection before it works on it)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import leases
from app.automations.sweep import run_automations
from app.concurrency import ConnectionPool, is_failing
from app.config import Settings
from app.connections import health
from app.connections.jobs import refresh_tokens
from app.connections.models import Connection
from app.connections.registry import ConnectorRegistry
from app.connections.repository import active_connections
from app.deals.reconcile import reconcile, record_reconcile_error
from app.funnels.webhook_upkeep import check_webhooks
from app.messages.delivery import run_message_delivery
from app.outbox.delivery import DrainResult, RetrySettings, connections_with_work, drain_connection
from app.rules.timers import run_timers
from app.waker import INBOX_JOB, OUTBOX_JOB, NoWaker, Waker
from app.webhooks.intake import Intake
from app.webhooks.processor import ProcessResult, process_inbox
from connectors.base import CRMError
from connectors.events import parse_deal_events

log = logging.getLogger("funnelsync.scheduler")
RECONCILE_JOB = "reconcile"


@dataclass
class Runtime:
    """What jobs need: the database, settings and this process's connectors."""

    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    connectors: ConnectorRegistry
    # One pool per job (app.concurrency), kept for the process's life: a slow turn set aside by one
    # run keeps its connection out of the next run of the same job until it ends.
    pools: dict[str, ConnectionPool[int]] = field(default_factory=dict)
    # The scheduler's job runs in progress by job id, for a shutdown to wait for (stop_scheduler)
    # and a wake-up to know the job is busy (SchedulerWaker).
    running: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    # Jobs woken while they ran: they run again as soon as the current run ends.
    woken: set[str] = field(default_factory=set)
    waker: Waker = field(default_factory=NoWaker)
    # This process's webhook deliveries in flight: the inbox job gives way to a busy receiver.
    intake: Intake = field(default_factory=Intake)

    def tracked(
        self, job: Callable[[Runtime], Awaitable[Any]], job_id: str
    ) -> Callable[[Runtime], Awaitable[Any]]:
        """`job` with its run recorded in `running` while it lasts; a wake-up that came meanwhile
        runs it again right after (the scheduler itself would drop it: one instance at a time)."""

        @functools.wraps(job)
        async def run(runtime: Runtime) -> Any:
            task = asyncio.current_task()
            assert task is not None, "APScheduler runs coroutine jobs as tasks"
            self.running[job_id] = task
            # After the task is done, behind APScheduler's own callback (added when it made the
            # task), which counts the run as ended: a run woken earlier would be dropped again.
            task.add_done_callback(lambda _: self._ended(job_id))
            return await job(runtime)

        return run

    def _ended(self, job_id: str) -> None:
        del self.running[job_id]
        if job_id in self.woken:
            self.woken.discard(job_id)
            self.waker.wake(job_id)

    def pool(self, job: str) -> ConnectionPool[int]:
        if job not in self.pools:
            # SQLite has one writer at a time, and a transaction that read before it writes fails
            # at once ("database is locked") when another wrote in between: one slot there.
            slots = 1 if self.settings.is_sqlite else self.settings.connection_concurrency
            self.pools[job] = ConnectionPool(slots, self.settings.connection_turn_budget_seconds)
        return self.pools[job]

    async def close(self) -> None:
        """At shutdown: the turns still set aside must not outlive the engine they use."""
        for pool in self.pools.values():
            await pool.cancel_aside()


async def run_inbox(runtime: Runtime) -> None:
    """Mirror pending deliveries. While this process's receiver is busy, first wait for it to calm
    down (at most inbox_yield_seconds), then give each connection one batch and end: the deliveries
    arriving meanwhile wake the job again (app.webhooks.intake)."""
    intake, at_most = runtime.intake, runtime.settings.inbox_yield_seconds
    await intake.give_way(at_most)
    result = await process_inbox(
        runtime.sessions,
        runtime.connectors.get,
        parse_deal_events,
        pool=runtime.pool(INBOX_JOB),
        keep_going=lambda: not intake.holds_back(at_most),
    )
    if result.processed or result.failed:
        log.info("inbox: %s processed, %s failed, %s deals", result.processed, result.failed, result.deals)
    if result.processed:
        runtime.waker.wake(OUTBOX_JOB)  # what the rules queued goes out now, not at the next tick


async def run_outbox(runtime: Runtime) -> DrainResult:
    """Deliver due outbox commands of every active connection: many connections at once, each in
    turns of a few requests under its own lease (app.concurrency). An account whose request just
    failed gets no further turn in this run: its commands wait for their backoff, not its slot."""
    total = DrainResult()
    async with runtime.sessions() as session:
        records = {record.id: record for record in await connections_with_work(session)}
    retry = RetrySettings.from_settings(runtime.settings)

    async def turn(connection_id: int) -> bool:
        record = records[connection_id]  # a turn that pauses it ends the connection's turns
        connector = await runtime.connectors.get(record)
        result = await drain_connection(
            runtime.sessions,
            record,
            connector,
            retry=retry,
            max_chunks=runtime.settings.outbox_chunks_per_turn,
        )
        total.add(result)
        return result.more and not result.errors and not result.paused

    await runtime.pool(OUTBOX_JOB).run(records, turn, failing=failing(records.values()))
    if total.delivered or total.dead:
        log.info("outbox: %s delivered, %s retried, %s dead", total.delivered, total.retried, total.dead)
    return total


def failing(records: Iterable[Connection]) -> list[int]:
    """Connections whose last CRM calls timed out, failed or were rate-limited: their turns run outside
    the pool's slots (app.concurrency), so an outage never takes a healthy account's slot."""
    return [r.id for r in records if is_failing(r.consecutive_failures, r.last_failure_class)]


async def run_until_idle(runtime: Runtime) -> tuple[ProcessResult, DrainResult]:
    """Process the inbox and drain due outbox commands until neither has work (`worker --once`)."""
    inbox, outbox = ProcessResult(), DrainResult()
    while True:
        processed = await process_inbox(
            runtime.sessions, runtime.connectors.get, parse_deal_events, pool=runtime.pool(INBOX_JOB)
        )
        drained = await run_outbox(runtime)
        # Turns set aside as slow count in these totals when they end: wait for them.
        await runtime.pool(INBOX_JOB).wait_idle()
        await runtime.pool(OUTBOX_JOB).wait_idle()
        inbox.processed += processed.processed
        inbox.failed += processed.failed
        inbox.deals += processed.deals
        outbox.delivered += drained.delivered
        outbox.dead += drained.dead
        if not (processed.processed or processed.failed or drained.delivered or drained.dead):
            return inbox, outbox


async def run_reconcile(runtime: Runtime) -> None:
    """Reconcile every active connection, several at once (app.concurrency), each under its lease."""
    async with runtime.sessions() as session:
        records = {record.id: record for record in await active_connections(session)}
    overlap = timedelta(seconds=runtime.settings.reconcile_overlap_seconds)

    async def turn(connection_id: int) -> bool:
        await _reconcile_one(runtime, records[connection_id], overlap)
        return False  # a reconcile is one turn: it pages through the CRM at the account's own rate

    await runtime.pool(RECONCILE_JOB).run(records, turn)


async def _reconcile_one(runtime: Runtime, record: Connection, overlap: timedelta) -> None:
    key = f"reconcile:{record.id}"
    if not await leases.acquire(runtime.sessions, key, timedelta(minutes=30)):
        return
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
    # Several processes may run any of these at once: each takes a lease per connection or is
    # idempotent (a fresh token or a live hook makes a second run a no-op; connector refreshes are
    # serialised per account).
    jobs: list[tuple[Callable[[Runtime], Awaitable[Any]], str, float]] = [
        (run_inbox, INBOX_JOB, settings.inbox_interval_seconds),
        (run_outbox, OUTBOX_JOB, settings.outbox_interval_seconds),
        (run_reconcile, "reconcile", settings.reconcile_interval_seconds),
        (run_rule_timers, "rules", settings.rules_interval_seconds),
        (run_automations, "automations", settings.automations_interval_seconds),
        (run_message_delivery, "messages", settings.messages_interval_seconds),
        (run_token_refresh, "tokens", 5 * 60),
        (run_webhook_check, "webhooks", 10 * 60),
    ]
    for job, job_id, seconds in jobs:
        scheduler.add_job(
            runtime.tracked(job, job_id), "interval", args=[runtime], seconds=seconds, id=job_id, **common
        )
    runtime.waker = SchedulerWaker(scheduler, runtime)
    return scheduler


async def stop_scheduler(scheduler: AsyncIOScheduler, runtime: Runtime) -> None:
    """Shut down without cutting work short: no job starts any more, those running get
    `shutdown_grace_seconds` to end. APScheduler's own shutdown cannot wait for coroutine jobs (its
    asyncio executor cancels them at once), hence the wait here. A job still running after the grace
    is cancelled, as a killed worker's would be: its leases expire and what it claimed is taken up
    again by the next run (app.outbox.recovery)."""
    scheduler.pause()
    runtime.waker = NoWaker()  # a run ending now must not schedule another
    if runtime.running:
        _, late = await asyncio.wait(
            set(runtime.running.values()), timeout=runtime.settings.shutdown_grace_seconds
        )
        if late:
            log.warning(
                "shutdown: %s job run(s) still going after %s s are cancelled; their work is taken up "
                "after the restart",
                len(late),
                runtime.settings.shutdown_grace_seconds,
            )
    scheduler.shutdown(wait=False)


class SchedulerWaker:
    """The app's Waker (app.waker) when this process runs the scheduler."""

    def __init__(self, scheduler: AsyncIOScheduler, runtime: Runtime | None = None) -> None:
        self.scheduler = scheduler
        self.runtime = runtime

    def wake(self, job_id: str) -> None:
        """Run a job now instead of at its next tick (a webhook just arrived); a job that is running
        runs again when this run ends (it may have read its work before what woke it was written)."""
        if not self.scheduler.running:
            return
        if self.runtime is not None and job_id in self.runtime.running:
            self.runtime.woken.add(job_id)
            return
        job = self.scheduler.get_job(job_id)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))
