"""Every error class the API produces maps to its exception, with the sandbox making the faults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connectors.amocrm import AmoCRMConnector
from connectors.base import (
    AccountBlocked,
    AuthError,
    NewTask,
    PermanentError,
    RateLimited,
    Retryable,
    StageMove,
)
from tests.connectors.amocrm.conftest import NO_RETRY, ConnectorFactory, Sandbox


def _moves(sandbox: Sandbox, count: int, status: int = 142) -> list[StageMove]:
    pipeline = str(sandbox.main_pipeline()["id"])
    ids = sandbox.create_leads(count)
    return [StageMove(f"m{i}", str(lead), pipeline, str(status)) for i, lead in enumerate(ids)]


async def test_429_html_is_rate_limited_and_retried(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    strict = make_connector(sandbox, retry=NO_RETRY)
    sandbox.fault("rate_limit", 1)
    with pytest.raises(RateLimited) as error:
        await strict.check()
    assert error.value.crm_text == "429 Too Many Requests" and error.value.retry_after is None

    patient = make_connector(sandbox)
    sandbox.reset_stats()
    sandbox.fault("rate_limit", 2)
    assert (await patient.check()).account_id == str(sandbox.config.account_id)
    assert sandbox.stats()["statuses"] == {"429": 2, "200": 1}


async def test_403_block_stops_all_calls_until_reset(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    connector = make_connector(sandbox)
    sandbox.fault("blocked_403", 1)
    with pytest.raises(AccountBlocked) as error:
        await connector.list_pipelines()
    assert error.value.crm_text == "403 Forbidden"
    sent = sandbox.stats()["total"]
    assert sent == 1  # never retried
    with pytest.raises(AccountBlocked):
        await connector.check()
    same_account = make_connector(sandbox, account_key=connector.account_key)
    with pytest.raises(AccountBlocked):
        await same_account.get_deals(["1"])
    assert sandbox.stats()["total"] == sent  # no request reached the CRM after the block

    sandbox.control("POST", "/_sandbox/unblock")  # amoCRM support lifted the block
    connector.reset_block()
    assert (await same_account.check()).account_id == str(sandbox.config.account_id)


async def test_json_403_and_402_are_permanent_not_a_block(
    sandbox: Sandbox, connector: AmoCRMConnector
) -> None:
    sandbox.fault("http_403")
    with pytest.raises(PermanentError) as error:
        await connector.list_webhooks()
    assert not isinstance(error.value, AccountBlocked) and "Access denied" in error.value.crm_text
    sandbox.fault("http_402")
    with pytest.raises(PermanentError) as error:
        await connector.check()
    assert error.value.status == 402 and "Подписка закончилась" in error.value.crm_text
    assert (await connector.check()).account_id == str(sandbox.config.account_id)  # not blocked


async def test_401_with_a_long_lived_token_is_auth_error(
    sandbox: Sandbox, connector: AmoCRMConnector
) -> None:
    sandbox.fault("expired_token")
    with pytest.raises(AuthError) as error:
        await connector.check()
    assert error.value.status == 401 and "Unauthorized" in error.value.crm_text
    assert sandbox.stats()["total"] == 1  # nothing to refresh: not resent


async def test_500_is_retryable(sandbox: Sandbox, make_connector: ConnectorFactory) -> None:
    sandbox.fault("http_500", 1)
    sandbox.fault("html_500", 1)
    assert await make_connector(sandbox).list_pipelines()
    assert sandbox.stats()["statuses"] == {"500": 2, "200": 1}
    sandbox.fault("http_503", 1)
    with pytest.raises(Retryable) as error:
        await make_connector(sandbox, retry=NO_RETRY).list_pipelines()
    assert error.value.status == 503


async def test_504_on_bulk_write_halves_the_batch(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    moves = _moves(sandbox, 50)
    sandbox.fault("http_504", 100, method="PATCH /api/v4/leads", over_batch=12)
    results = await connector.move_deals(moves)
    assert all(r.ok for r in results) and [r.ref for r in results] == [m.ref for m in moves]
    sizes = sandbox.stats()["batch_sizes"]["PATCH /api/v4/leads"]
    assert sizes[:3] == [50, 25, 12]
    log = [e for e in sandbox.requests() if e["route"] == "PATCH /api/v4/leads"]
    applied = [e["batch"] for e in log if e["status"] == 200]
    assert sum(applied) == 50 and max(applied) <= 12
    assert all(e["batch"] > 12 for e in log if e["status"] == 504)
    assert all(sandbox.lead(m.deal_id)["status_id"] == 142 for m in moves[::10])


async def test_504_on_a_single_item_is_retryable(sandbox: Sandbox, make_connector: ConnectorFactory) -> None:
    moves = _moves(sandbox, 1)
    sandbox.fault("http_504", 10, method="PATCH /api/v4/leads")
    with pytest.raises(Retryable):
        await make_connector(sandbox, retry=NO_RETRY).move_deals(moves)


async def test_validation_error_maps_to_its_item_and_the_rest_is_applied(
    sandbox: Sandbox, connector: AmoCRMConnector
) -> None:
    moves = _moves(sandbox, 3)
    bad = StageMove(moves[1].ref, moves[1].deal_id, moves[1].pipeline_id, "999")
    results = await connector.move_deals([moves[0], bad, moves[2]])
    assert [r.ok for r in results] == [True, False, True]
    error = results[1].error
    assert error is not None and error.item_ref == bad.ref
    assert error.crm_code == "NotSupportedChoice" and "status_id" in error.crm_text
    assert sandbox.stats()["batch_sizes"]["PATCH /api/v4/leads"] == [3, 2]  # remainder resent once
    assert [sandbox.lead(m.deal_id)["status_id"] for m in (moves[0], moves[2])] == [142, 142]
    assert sandbox.lead(bad.deal_id)["status_id"] != 142


async def test_create_with_a_bad_item_creates_the_others_once(
    sandbox: Sandbox, connector: AmoCRMConnector
) -> None:
    [lead] = sandbox.create_leads(1)
    due = datetime.now(UTC) + timedelta(hours=2)
    tasks = [
        NewTask("a", str(lead), "A", due),
        NewTask("b", str(lead), "B", due, responsible_id="123"),  # no such user
        NewTask("c", str(lead), "C", due),
    ]
    results = await connector.create_tasks(tasks)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error is not None and "responsible_user_id" in results[1].error.crm_text
    assert sandbox.stats()["batch_sizes"]["POST /api/v4/tasks"] == [3, 2]
    assert len({r.crm_id for r in results if r.ok}) == 2


async def test_timed_out_create_is_not_resent(sandbox: Sandbox, make_connector: ConnectorFactory) -> None:
    [lead] = sandbox.create_leads(1)
    connector = make_connector(sandbox, timeout=0.3)
    sandbox.fault("timeout", 1, method="POST /api/v4/tasks", delay=1.0)
    with pytest.raises(Retryable) as error:
        await connector.create_tasks([NewTask("t", str(lead), "T", datetime.now(UTC))])
    assert error.value.crm_code == "TIMEOUT"
    assert sandbox.stats()["requests"]["POST /api/v4/tasks"] == 1


async def test_not_found_and_bad_ids_are_permanent(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    results = await connector.move_deals([StageMove("x", "not-a-number", "1", "142")])
    assert results[0].error is not None and results[0].error.item_ref == "x"
    assert sandbox.stats()["total"] == 0  # refused before any request
