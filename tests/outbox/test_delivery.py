"""Delivery through the outbox against each sandbox on each database: outages and rate-limit storms
end with every command delivered exactly once, a permanent error dead-letters only its command, an
account block pauses the queue without using up attempts, and Bitrix24 packs 50 commands a batch."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from app.connections.registry import ConnectorRegistry
from app.outbox.delivery import RetrySettings, drain_connection
from app.scheduler import Runtime, run_outbox
from app.waker import OUTBOX_JOB
from tests.outbox.conftest import CONNECTOR_RETRY, NO_DELAY, OUTAGE_FAULT, Outbox
from tests.support.matrix import each_crm_on_one_database

OUTAGE = {"bitrix24": (OUTAGE_FAULT["bitrix24"], "html_503"), "amocrm": (OUTAGE_FAULT["amocrm"], "503")}
STORM = {"bitrix24": ("rate_limit", "QUERY_LIMIT_EXCEEDED"), "amocrm": ("rate_limit", "429")}


async def _seed_work(outbox: Outbox, moves: int, tasks: int) -> tuple[list[str], list[int], list[int]]:
    deals = outbox.seed(max(moves, tasks))
    move_ids = await outbox.enqueue_moves(deals[:moves], outbox.stages[0])
    task_ids = await outbox.enqueue_tasks(deals[:tasks], "Перезвонить клиенту")
    return deals, move_ids, task_ids


def _assert_each_effect_once(outbox: Outbox, deals: list[str], moves: int, tasks: int) -> None:
    stages = outbox.stages_of()
    assert Counter(stages[d] for d in deals[:moves]) == {outbox.stages[0]: moves}
    assert outbox.applied_writes("move") == moves
    held = outbox.tasks()
    assert sum(held.values()) == tasks  # no task created twice, none missing
    assert all(held[(d, "Перезвонить клиенту")] == 1 for d in deals[:tasks])
    assert outbox.applied_writes("task") == tasks


@each_crm_on_one_database()
async def test_an_outage_ends_with_every_command_delivered_once(outbox: Outbox) -> None:
    deals, move_ids, task_ids = await _seed_work(outbox, moves=60, tasks=60)
    kind, answered = OUTAGE[outbox.crm]
    faults = 2 * CONNECTOR_RETRY.attempts + 2  # two chunks fail outright, a third gets through late
    outbox.box.fault(kind, count=faults)

    results = await outbox.drain(outbox.connector())

    assert outbox.rejections()[answered] == faults  # the outage really happened
    assert len(results) == 2 and results[0].retried == 60 and results[0].delivered == 60
    commands = await outbox.commands()
    assert {c.status for c in commands} == {"done"}
    assert {c.attempts for c in commands if c.id in move_ids} == {2}  # the outage hit the moves
    assert {c.attempts for c in commands if c.id in task_ids} == {1}
    assert all(c.last_error is None and c.done_at is not None for c in commands)
    _assert_each_effect_once(outbox, deals, moves=60, tasks=60)


@each_crm_on_one_database(crossed=True)
async def test_a_rate_limit_storm_is_absorbed(outbox: Outbox) -> None:
    deals, _, _ = await _seed_work(outbox, moves=60, tasks=60)
    kind, answered = STORM[outbox.crm]
    faults = 20  # more than one drain's worth of connector retries (4 chunks x 3 attempts)
    outbox.box.fault(kind, count=faults)

    results = await outbox.drain(outbox.connector())

    assert outbox.rejections()[answered] == faults
    assert sum(r.dead for r in results) == 0
    commands = await outbox.commands()
    assert {c.status for c in commands} == {"done"}
    assert max(c.attempts for c in commands) > 1  # the storm outlasted the connector's own retries
    _assert_each_effect_once(outbox, deals, moves=60, tasks=60)


@each_crm_on_one_database()
async def test_a_permanent_error_dead_letters_only_its_command(outbox: Outbox) -> None:
    deals = outbox.seed(12)
    foreign = await outbox.foreign_stage()
    good_moves = await outbox.enqueue_moves(deals[:8], outbox.stages[1])
    [bad_move] = await outbox.enqueue_moves([deals[8]], foreign)
    doomed = deals[9]
    outbox.delete_deal(doomed)
    if outbox.crm == "bitrix24":  # Bitrix24 binds a task to any id; a move of a deleted deal fails
        [bad_other] = await outbox.enqueue_moves([doomed], outbox.stages[1])
    else:
        [bad_other] = await outbox.enqueue_tasks([doomed], "Задача удалённой сделке")
    good_tasks = await outbox.enqueue_tasks(deals[:3], "Перезвонить клиенту")
    initial = outbox.stages_of()[deals[8]]

    [result] = await outbox.drain(outbox.connector())

    assert (result.delivered, result.dead, result.retried) == (11, 2, 0)
    by_id = {c.id: c for c in await outbox.commands()}
    expected_text = {
        "bitrix24": (f'Incorrect value for field "Stage" ({foreign})', "Element not found"),
        "amocrm": (
            "status_id: The value you selected is not a valid choice.",
            "entity_id: The value you selected is not a valid choice.",
        ),
    }[outbox.crm]
    for command_id, text in zip((bad_move, bad_other), expected_text, strict=True):
        command = by_id[command_id]
        assert (command.status, command.attempts, command.last_error) == ("dead", 1, text)
    assert {by_id[i].status for i in good_moves + good_tasks} == {"done"}
    stages = outbox.stages_of()
    assert {stages[d] for d in deals[:8]} == {outbox.stages[1]}
    assert stages[deals[8]] == initial  # the bad move changed nothing
    assert sum(outbox.tasks().values()) == 3


BLOCK = {"bitrix24": ("overload", "OVERLOAD_LIMIT"), "amocrm": ("blocked_403", "403")}


@each_crm_on_one_database(crossed=True)
async def test_an_account_block_pauses_the_queue_and_a_resume_delivers(outbox: Outbox) -> None:
    """amoCRM: 403 HTML after too many 429s (blocked until support lifts it); Bitrix24:
    OVERLOAD_LIMIT. The account is the problem, not the commands: pause, keep their attempts."""
    deals, move_ids, task_ids = await _seed_work(outbox, moves=60, tasks=60)
    kind, answered = BLOCK[outbox.crm]
    outbox.box.fault(kind, count=1 if outbox.crm == "amocrm" else 1000)  # Bitrix24: until cleared
    connector = outbox.connector()

    [result] = await outbox.drain(connector)

    assert result.paused and result.delivered == result.retried == result.dead == 0
    assert outbox.rejections()[answered] == 1  # one request, then nothing more to a blocked account
    record = await outbox.record()
    assert record.status == "paused"
    assert record.paused_reason and record.paused_reason.startswith("AccountBlocked")
    commands = await outbox.commands()
    assert {(c.status, c.attempts) for c in commands} == {("pending", 0)}  # no attempt used up
    # While paused, drains leave the account alone.
    await outbox.make_due()
    assert await outbox.drain(connector) == []
    assert outbox.rejections()[answered] == 1

    # The CRM lifts the block; an operator resumes the connection through the API.
    if outbox.crm == "amocrm":
        outbox.box.control("POST", "/_sandbox/unblock")
    else:
        outbox.sandbox.clear_faults()
    resumed = await outbox.resume()
    assert resumed["status"] == "active" and resumed["paused_reason"] is None
    results = await outbox.drain(outbox.connector())

    assert sum(r.delivered for r in results) == 120 and not any(r.paused for r in results)
    assert {(c.status, c.attempts) for c in await outbox.commands()} == {("done", 1)}
    _assert_each_effect_once(outbox, deals, moves=60, tasks=60)
    assert move_ids and task_ids


@pytest.mark.parametrize("crm", ["bitrix24"])
async def test_bitrix24_sends_120_tasks_in_3_batch_requests(outbox: Outbox) -> None:
    deals = outbox.seed(120)
    await outbox.enqueue_tasks(deals, "Перезвонить клиенту")
    outbox.sandbox.reset_stats()

    [result] = await outbox.drain(outbox.connector())

    stats = outbox.box.stats()
    assert stats["by_method"] == {"batch": 3}
    assert stats["commands"] == {"tasks.task.add": 120}
    assert (result.delivered, result.requests) == (120, 3)
    assert sum(outbox.tasks().values()) == 120


@pytest.mark.parametrize("crm", ["amocrm"])
@pytest.mark.parametrize(
    ("fault", "words"), [("http_402", "Подписка закончилась"), ("http_403", "Access denied")]
)
async def test_an_unpaid_or_unauthorised_account_pauses_instead_of_dead_lettering(
    outbox: Outbox, fault: str, words: str
) -> None:
    """amoCRM's 402 (subscription over) and a JSON 403 (rights, IP) refuse the account, not the
    request: every command would get the same answer, so the queue pauses with the CRM's words and
    no attempt is used up; once the account is fixed, a resume delivers everything."""
    deals, _, _ = await _seed_work(outbox, moves=3, tasks=3)
    outbox.box.fault(fault, count=1)

    [result] = await outbox.drain(outbox.connector())

    assert result.paused and result.dead == result.delivered == 0
    record = await outbox.record()
    assert record.status == "paused" and record.paused_reason
    assert f"HTTP {fault.removeprefix('http_')}" in record.paused_reason and words in record.paused_reason
    assert {(c.status, c.attempts) for c in await outbox.commands()} == {("pending", 0)}

    await outbox.resume()
    results = await outbox.drain(outbox.connector())
    assert sum(r.delivered for r in results) == 6
    assert {c.status for c in await outbox.commands()} == {"done"}
    _assert_each_effect_once(outbox, deals, moves=3, tasks=3)


@pytest.mark.parametrize("crm", ["amocrm"])
async def test_amocrm_sends_120_tasks_in_3_bulk_requests(outbox: Outbox) -> None:
    deals = outbox.seed(120)
    await outbox.enqueue_tasks(deals, "Перезвонить клиенту")
    outbox.sandbox.reset_stats()

    [result] = await outbox.drain(outbox.connector())

    assert outbox.box.stats()["batch_sizes"] == {"POST /api/v4/tasks": [50, 50, 20]}
    assert result.delivered == 120


@each_crm_on_one_database()
async def test_attempts_run_out_into_dead_with_the_crm_text(outbox: Outbox) -> None:
    """An outage longer than the retry budget dead-letters the commands, visible with the error."""
    await _seed_work(outbox, moves=5, tasks=0)
    kind, _ = OUTAGE[outbox.crm]
    outbox.box.fault(kind, count=1000)
    retry = RetrySettings(max_attempts=3, base_delay=timedelta(0), max_delay=timedelta(0))
    results = await outbox.drain(outbox.connector(), retry=retry)
    outbox.sandbox.clear_faults()
    assert [r.retried for r in results] == [5, 5, 0] and results[-1].dead == 5
    commands = await outbox.commands()
    assert {(c.status, c.attempts) for c in commands} == {("dead", 3)}
    assert len({c.last_error for c in commands}) == 1 and commands[0].last_error


@pytest.mark.parametrize("crm", ["amocrm"])
async def test_a_running_worker_delivers_after_unblock_and_resume(outbox: Outbox) -> None:
    """What `funnelsync worker` (the scheduler's run_outbox with its ConnectorRegistry) does: the
    connector it keeps must not go on refusing locally the 403 it remembers once resumed."""
    deals = outbox.seed(10)
    await outbox.enqueue_moves(deals, outbox.stages[0])
    runtime = Runtime(outbox.sessions, outbox.settings, ConnectorRegistry(outbox.sessions, outbox.settings))
    try:
        outbox.box.fault("blocked_403", count=1)
        await run_outbox(runtime)
        assert (await outbox.record()).status == "paused"

        outbox.box.control("POST", "/_sandbox/unblock")
        await outbox.resume()
        result = await run_outbox(runtime)

        assert (await outbox.record()).status == "active", (await outbox.record()).paused_reason
        assert result.delivered == 10
    finally:
        await runtime.connectors.aclose()


@pytest.mark.parametrize("crm", ["bitrix24"])
async def test_the_workers_retry_budget_comes_from_the_settings(outbox: Outbox) -> None:
    """FUNNELSYNC_OUTBOX_MAX_ATTEMPTS reaches the scheduler's drain: with 1, one failed attempt is
    enough to dead-letter a command (the default of 8 would only reschedule it)."""
    deals = outbox.seed(2)
    await outbox.enqueue_moves(deals, outbox.stages[0])
    kind, _ = OUTAGE[outbox.crm]
    outbox.box.fault(kind, count=1000)
    settings = outbox.settings.model_copy(update={"outbox_max_attempts": 1})
    runtime = Runtime(outbox.sessions, settings, ConnectorRegistry(outbox.sessions, settings))
    try:
        result = await run_outbox(runtime)
        # Its CRM answering with retries, the turn gave its slot back and finishes in the background:
        # the run's totals count it when it ends.
        await runtime.pool(OUTBOX_JOB).wait_idle()
    finally:
        await runtime.connectors.aclose()
        outbox.sandbox.clear_faults()
    assert result.dead == 2
    assert {(c.status, c.attempts) for c in await outbox.commands()} == {("dead", 1)}


@each_crm_on_one_database(crossed=True)
async def test_a_timed_out_task_batch_is_looked_up_before_it_is_sent_again(outbox: Outbox) -> None:
    """A create whose answer never came may exist in the CRM: the next drain asks the CRM (by the
    marker in the task) and sends again only what is missing, so every task exists exactly once."""
    deals = outbox.seed(3)
    await outbox.enqueue_tasks(deals, "Перезвонить")
    method = "batch" if outbox.crm == "bitrix24" else "POST /api/v4/tasks"
    outbox.box.fault("timeout", count=1, method=method, seconds=3, delay=3)
    connector = outbox.connector(timeout=0.5)
    first = await drain_connection(outbox.sessions, await outbox.record(), connector, retry=NO_DELAY)
    assert first.retried == 3 and first.delivered == 0
    assert {c.status for c in await outbox.commands()} == {"sending"}  # in flight, not resent
    await outbox.drain(outbox.connector())
    commands = await outbox.commands()
    assert {c.status for c in commands} == {"done"} and all(c.crm_result_id for c in commands)
    assert outbox.tasks() == {(d, "Перезвонить"): 1 for d in deals}
