"""Many connections per worker: a slow account does not hold the slot a healthy one needs. Two
Bitrix24 portals, one worker with a single slot (the worst case) and a short turn budget; the slow
portal (the first in the queue) answers its first call only after several turn budgets. Outcomes,
not times, are asserted: when the job returns, the healthy account's work is done while the slow
account's call is still in flight; once that call is answered its work completes too."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select

from app.concurrency import ConnectionPool
from app.outbox.models import OutboxCommand
from app.scheduler import Runtime, run_inbox, run_outbox
from app.waker import INBOX_JOB, OUTBOX_JOB
from app.webhooks.models import InboxEvent
from app.webhooks.service import store_event
from connectors.base import Retryable
from connectors.http import RetryPolicy, with_retries
from tests.outbox.conftest import Outbox
from tests.outbox.test_tenants_fairness import runtime_for, two_tenants

# A turn past this many seconds gives its slot back; the slow portal answers after SLOW_ANSWER.
TURN_BUDGET = 1.5
SLOW_ANSWER = 6.0


def _one_slot(outbox: Outbox) -> Runtime:
    return runtime_for(
        outbox.settings,
        outbox.sessions,
        connection_concurrency=1,
        connection_turn_budget_seconds=TURN_BUDGET,
    )


async def _statuses(outbox: Outbox) -> dict[int, set[str]]:
    async with outbox.sessions() as session:
        rows = await session.execute(select(OutboxCommand.connection_id, OutboxCommand.status))
    by_connection: dict[int, set[str]] = {}
    for connection_id, status in rows:
        by_connection.setdefault(connection_id, set()).add(str(status))
    return by_connection


async def test_a_slow_account_does_not_hold_up_another_accounts_delivery(
    database_url: str, tmp_path: Path
) -> None:
    async with two_tenants(database_url, tmp_path) as (slow, healthy):
        await slow.enqueue_moves(slow.seed(3), slow.stages[0])
        await healthy.enqueue_moves(healthy.seed(3), healthy.stages[0])
        slow.box.fault("timeout", count=1, seconds=SLOW_ANSWER)  # its first call hangs, then goes on
        runtime = _one_slot(slow)
        try:
            await run_outbox(runtime)
            during = await _statuses(slow)
            assert runtime.pool(OUTBOX_JOB).set_aside == [slow.connection_id]
            await runtime.pool(OUTBOX_JOB).wait_idle()
        finally:
            await runtime.connectors.aclose()

        assert during[healthy.connection_id] == {"done"}  # delivered in the same run ...
        assert during[slow.connection_id] == {"sending"}  # ... while the slow call was in flight
        assert (await _statuses(slow))[slow.connection_id] == {"done"}  # and nothing of it lost


async def _store_update(outbox: Outbox, deal_id: str) -> None:
    body = f"event=ONCRMDEALUPDATE&data[FIELDS][ID]={deal_id}&ts=1700000000&auth[application_token]=x"
    async with outbox.sessions.begin() as session:
        assert await store_event(
            session, outbox.connection_id, f"e{deal_id}", body.encode(), "application/x-www-form-urlencoded"
        )


async def _event_statuses(outbox: Outbox) -> dict[int, str]:
    async with outbox.sessions() as session:
        rows = await session.execute(select(InboxEvent.connection_id, InboxEvent.status))
    return {connection_id: str(status) for connection_id, status in rows}


async def test_a_slow_account_does_not_hold_up_another_accounts_mirror(
    database_url: str, tmp_path: Path
) -> None:
    async with two_tenants(database_url, tmp_path) as (slow, healthy):
        await _store_update(slow, slow.seed(1)[0])
        await _store_update(healthy, healthy.seed(1)[0])
        slow.box.fault("timeout", count=1, seconds=SLOW_ANSWER)  # the deal fetch hangs, then goes on
        runtime = _one_slot(slow)
        try:
            await run_inbox(runtime)
            during = await _event_statuses(slow)
            assert runtime.pool(INBOX_JOB).set_aside == [slow.connection_id]
            await runtime.pool(INBOX_JOB).wait_idle()
        finally:
            await runtime.connectors.aclose()

        assert during == {healthy.connection_id: "processed", slow.connection_id: "pending"}
        assert (await _event_statuses(slow))[slow.connection_id] == "processed"


async def test_a_failing_connections_turn_holds_no_slot_and_is_not_waited_for() -> None:
    """The pool itself: a connection known to be failing gets one turn outside the slots; the run
    gives the others the one slot and returns while that turn is still going, and the next run
    starts no second turn of it."""
    answered = asyncio.Event()
    finished: list[str] = []

    async def turn(key: str) -> bool:
        if key == "down":
            await answered.wait()  # its CRM has not answered yet
        finished.append(key)
        return False

    pool = ConnectionPool[str](slots=1)
    await pool.run(["down", "a", "b"], turn, failing=["down"])
    assert finished == ["a", "b"] and pool.busy("down")
    await pool.run(["down", "a"], turn, failing=["down"])
    assert finished == ["a", "b", "a"]

    answered.set()
    await pool.wait_idle()
    assert finished == ["a", "b", "a", "down"] and not pool.busy("down")


async def test_a_turn_whose_crm_call_starts_retrying_gives_its_slot_back_at_once() -> None:
    """The moment a turn's CRM call waits to try again (a 503, a timeout, a rate limit), the run
    stops waiting for it, whatever the turn budget: here an hour, so only that can set it aside."""
    backoff_over = asyncio.Event()
    finished: list[str] = []
    answers = iter([Retryable("503 Service Unavailable"), None])

    async def crm_call() -> str:
        error = next(answers)
        if error is not None:
            raise error
        return "ok"

    async def backoff(_: float) -> None:
        await backoff_over.wait()

    async def turn(key: str) -> bool:
        if key == "down":
            await with_retries(crm_call, RetryPolicy(attempts=3, max_elapsed=3600), sleep=backoff)
        finished.append(key)
        return False

    pool = ConnectionPool[str](slots=1, turn_budget=3600)
    await asyncio.wait_for(pool.run(["down", "a"], turn), timeout=30)  # a guard: fails if it waits
    assert finished == ["a"] and pool.busy("down") and pool.set_aside == ["down"]

    backoff_over.set()
    await pool.wait_idle()
    assert finished == ["a", "down"]
