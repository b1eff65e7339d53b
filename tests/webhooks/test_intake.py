"""The inbox job gives way to a busy webhook receiver in the same process (app.webhooks.intake):
while many deliveries are in flight a run waits for them, then gives each connection one batch;
with the receiver quiet it runs as before. A real Bitrix24 sandbox and both databases."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.types import Receive, Scope, Send

from app import metrics
from app.main import create_app
from app.scheduler import run_inbox
from app.webhooks.intake import BUSY_AT, CountDeliveries, Intake
from app.webhooks.models import EventStatus, InboxEvent
from app.webhooks.processor import process_inbox
from app.webhooks.service import store_event
from connectors.events import parse_deal_events
from tests.outbox.conftest import Outbox, open_outbox
from tests.outbox.test_tenants_fairness import runtime_for
from tests.support.crm import settings_for

GAVE_WAY = "funnelsync_inbox_gave_way_seconds_total"


def _busy(intake: Intake, stack: ExitStack) -> None:
    for _ in range(BUSY_AT):
        stack.enter_context(intake.delivery())


async def _store_updates(outbox: Outbox, deal_ids: list[str]) -> None:
    async with outbox.sessions.begin() as session:
        for deal_id in deal_ids:
            body = f"event=ONCRMDEALUPDATE&data[FIELDS][ID]={deal_id}&ts=1700000000"
            assert await store_event(
                session,
                outbox.connection_id,
                f"e{deal_id}",
                body.encode(),
                "application/x-www-form-urlencoded",
            )


async def _pending(outbox: Outbox) -> int:
    async with outbox.sessions() as session:
        query = select(func.count()).where(InboxEvent.status == EventStatus.PENDING)
        return int(await session.scalar(query) or 0)


def _metric(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


async def test_busy_means_deliveries_in_flight_and_giving_way_ends_when_they_do() -> None:
    intake = Intake()
    in_flight, gave_way = _metric("funnelsync_webhook_requests_in_flight"), _metric(GAVE_WAY)
    with ExitStack() as stack:
        _busy(intake, stack)
        assert intake.busy and intake.in_flight == BUSY_AT
        assert _metric("funnelsync_webhook_requests_in_flight") == in_flight + BUSY_AT
        await intake.give_way(0)  # no wait allowed: returns at once, busy or not
        waiting = asyncio.create_task(intake.give_way(3600))
        await asyncio.sleep(0)  # one loop turn: the task is now waiting
        assert intake.giving_way == 1 and not waiting.done()
    # The deliveries ended: the wait ends (well before its hour).
    await waiting
    assert not intake.busy and intake.giving_way == 0
    assert _metric("funnelsync_webhook_requests_in_flight") == in_flight
    assert _metric(GAVE_WAY) > gave_way  # the wait is counted for ops to see


async def test_webhook_requests_are_counted_while_in_flight_and_others_are_not(tmp_path: Path) -> None:
    intake = Intake()
    seen: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(intake.in_flight)
        if scope["path"].endswith("/fails"):
            raise RuntimeError("the endpoint failed")

    counted = CountDeliveries(app, intake)
    no_io: Any = None
    await counted({"type": "http", "path": "/webhooks/amocrm/amo/secret"}, no_io, no_io)
    await counted({"type": "http", "path": "/api/deals"}, no_io, no_io)
    with pytest.raises(RuntimeError):
        await counted({"type": "http", "path": "/webhooks/bitrix24/fails"}, no_io, no_io)
    assert seen == [1, 0, 1] and intake.in_flight == 0  # a failed request is not counted forever
    # The app counts into the Intake its scheduler's inbox job reads.
    served = create_app(settings_for(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"))
    assert isinstance(served.state.intake, Intake)
    assert CountDeliveries in [m.cls for m in served.user_middleware]


async def test_an_inbox_run_waits_for_a_busy_receiver_then_mirrors(database_url: str, tmp_path: Path) -> None:
    async with open_outbox("bitrix24", database_url, tmp_path) as outbox:
        await _store_updates(outbox, outbox.seed(2))
        runtime = runtime_for(outbox.settings, outbox.sessions, inbox_yield_seconds=3600)
        try:
            with ExitStack() as stack:
                _busy(runtime.intake, stack)
                run = asyncio.create_task(run_inbox(runtime))
                await asyncio.sleep(0)  # one loop turn: the run reached its wait
                assert runtime.intake.giving_way == 1
                assert await _pending(outbox) == 2  # nothing mirrored while the receiver is busy
            await run
            assert await _pending(outbox) == 0
        finally:
            await runtime.connectors.aclose()


async def test_with_the_receiver_busy_each_connection_gets_one_batch(
    database_url: str, tmp_path: Path
) -> None:
    async with open_outbox("bitrix24", database_url, tmp_path) as outbox:
        await _store_updates(outbox, outbox.seed(3))
        runtime = runtime_for(outbox.settings, outbox.sessions)
        try:
            busy = await process_inbox(
                outbox.sessions, runtime.connectors.get, parse_deal_events, batch=1, keep_going=lambda: False
            )
            assert busy.processed == 1 and await _pending(outbox) == 2
            calm = await process_inbox(outbox.sessions, runtime.connectors.get, parse_deal_events, batch=1)
            assert calm.processed == 2 and await _pending(outbox) == 0
        finally:
            await runtime.connectors.aclose()
