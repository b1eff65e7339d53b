"""Many connections per worker: a backlog on one account never holds up another account's next
command. Two Bitrix24 sandboxes (two client portals), one database, the scheduler's run_outbox with
a single slot (the worst case for fairness); the order of requests is read from the outbox's
attempt log, which records each request's commands as one run of rows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.concurrency import ConnectionPool
from app.config import Settings
from app.connections.registry import ConnectorRegistry
from app.outbox.models import OutboxAttempt, OutboxCommand
from app.scheduler import Runtime, run_outbox
from connectors.base import MAX_BATCH
from tests.outbox.conftest import Outbox, open_outbox
from tests.support.crm import crm_sandbox


@asynccontextmanager
async def two_tenants(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Outbox, Outbox]]:
    """Two Bitrix24 portals, each with a connection in one database (the first has the lower id)."""
    async with open_outbox("bitrix24", database_url, tmp_path) as first:
        with crm_sandbox("bitrix24") as sandbox:
            record = sandbox.connection(first.settings, name="second")
            async with first.sessions.begin() as session:
                session.add(record)
            second = Outbox(sandbox, first.sessions, first.settings, record.id, first.pipeline, tmp_path)
            second._keys = 1_000_000  # its commands' idempotency keys differ from the first's
            yield first, second


def runtime_for(settings: Settings, sessions: Any, **options: Any) -> Runtime:
    """A worker's runtime with these settings changed (e.g. one slot, a short turn budget)."""
    changed = settings.model_copy(update=options)
    return Runtime(sessions, changed, ConnectorRegistry(sessions, changed))


async def _connections_in_send_order(outbox: Outbox) -> list[int]:
    """The connection of every command attempt, in the order the attempts were recorded."""
    async with outbox.sessions() as session:
        rows = await session.scalars(
            select(OutboxCommand.connection_id)
            .join(OutboxAttempt, OutboxAttempt.command_id == OutboxCommand.id)
            .order_by(OutboxAttempt.id)
        )
        return list(rows)


async def test_a_backlog_delays_another_account_by_one_request_at_most(
    database_url: str, tmp_path: Path
) -> None:
    async with two_tenants(database_url, tmp_path) as (busy, quiet):
        backlog = busy.seed(500)
        await busy.enqueue_moves(backlog, busy.stages[0])
        [deal] = quiet.seed(1)
        [command] = await quiet.enqueue_moves([deal], quiet.stages[0])
        runtime = runtime_for(busy.settings, busy.sessions, connection_concurrency=1)
        busy.sandbox.reset_stats()
        try:
            result = await run_outbox(runtime)
        finally:
            await runtime.connectors.aclose()

        assert result.delivered == 501 and result.requests == 11
        order = await _connections_in_send_order(busy)
        # The quiet account's one command went out after at most one request of the busy one
        # (50 commands), not after its whole backlog of 10 requests.
        assert order.index(quiet.connection_id) <= MAX_BATCH
        assert order.count(busy.connection_id) == 500
        assert busy.box.stats()["by_method"]["batch"] == 10  # every busy request reached its portal
        assert (await quiet.commands([command]))[0].status == "done"


async def test_the_pool_takes_turns_round_robin_within_its_slots() -> None:
    """The pool itself: two slots, keys with 3, 1 and 2 turns of work; never more than two turns at
    once, never two of one key at once, and every key's next turn queues behind the others."""
    work = {"a": 3, "b": 1, "c": 2}
    started: list[str] = []
    running: set[str] = set()
    peak = 0

    async def turn(key: str) -> bool:
        nonlocal peak
        assert key not in running
        running.add(key)
        peak = max(peak, len(running))
        started.append(key)
        await _yield_a_few_times()
        running.discard(key)
        work[key] -= 1
        return work[key] > 0

    await ConnectionPool[str](slots=2).run(["a", "b", "c"], turn)

    assert work == {"a": 0, "b": 0, "c": 0}
    assert peak == 2
    assert started == ["a", "b", "c", "a", "c", "a"]


async def _yield_a_few_times() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_shutdown_cancels_the_turns_set_aside() -> None:
    """A failing account's turn runs outside the slots; at shutdown it is cancelled and awaited, so
    it never runs on against a database engine already disposed."""
    pool: ConnectionPool[int] = ConnectionPool(1)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def turn(key: int) -> bool:
        started.set()
        try:
            await asyncio.Event().wait()  # an account that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return False

    await pool.run([7], turn, failing=[7])  # returns at once: the failing key's turn is set aside
    await started.wait()
    assert pool.busy(7)
    await pool.cancel_aside()
    assert cancelled.is_set() and not pool.busy(7)
