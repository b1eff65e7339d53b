"""Every error class the portal produces maps to exactly one connector exception."""

from __future__ import annotations

import time

import pytest

from connectors.base import AccountBlocked, AuthError, PermanentError, RateLimited, Retryable
from connectors.bitrix24.client import Bitrix24Connector
from connectors.http import RetryPolicy
from tests.connectors.bitrix24.conftest import NO_RETRY, Sandbox, running_sandbox


@pytest.fixture
async def strict(sandbox: Sandbox) -> Bitrix24Connector:
    """A connector that does not retry, so the first classified error surfaces."""
    return sandbox.webhook(retry=NO_RETRY)


@pytest.mark.parametrize(
    ("kind", "exc_type", "code"),
    [
        ("rate_limit", RateLimited, "QUERY_LIMIT_EXCEEDED"),
        ("http_500", Retryable, "INTERNAL_SERVER_ERROR"),
        ("html_500", Retryable, "HTTP_500"),
        ("http_503", Retryable, "HTTP_503"),
        ("html_200", Retryable, "HTTP_200"),
        ("blocked_403", AuthError, "HTTP_403"),
        ("invalid_token", AuthError, "invalid_token"),
        ("expired_token", AuthError, "expired_token"),  # webhook auth has nothing to refresh
        ("overload", AccountBlocked, "OVERLOAD_LIMIT"),
    ],
)
async def test_fault_maps_to_exception(
    sandbox: Sandbox, strict: Bitrix24Connector, kind: str, exc_type: type[Exception], code: str
) -> None:
    sandbox.fault(kind, method="crm.category.list")
    with pytest.raises(exc_type) as info:
        await strict.list_pipelines()
    assert getattr(info.value, "crm_code", None) == code
    await strict.aclose()


async def test_transient_errors_are_retried_until_success(sandbox: Sandbox) -> None:
    conn = sandbox.webhook(retry=RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.02))
    for kind in ("rate_limit", "http_500", "html_500"):
        sandbox.fault(kind, method="crm.category.list")
    pipelines = await conn.list_pipelines()
    assert [p.id for p in pipelines] == ["0"]
    assert sandbox.stats()["by_method"]["crm.category.list"] == 4
    await conn.aclose()


async def test_timeout_is_retryable(sandbox: Sandbox) -> None:
    conn = sandbox.webhook(retry=NO_RETRY, timeout=0.2)
    sandbox.fault("timeout", method="scope", seconds=0.6)
    with pytest.raises(Retryable) as info:
        await conn.check()
    assert info.value.crm_code == "TIMEOUT"
    await conn.aclose()


async def test_default_timeout_outlasts_the_portals_own_request_limit(sandbox: Sandbox) -> None:
    """The cloud portal cuts a request off at about 60 s and answers then. A client that gives up
    sooner abandons requests the portal is still executing: a create it applies after we left
    becomes "uncertain" and must be looked up. So the default waits longer."""
    conn = Bitrix24Connector(webhook_url=sandbox.webhook_url)
    timeout = conn.transport.http._client.timeout  # what httpx will actually wait for
    assert timeout.read is not None and timeout.read > 60
    assert timeout.write is not None and timeout.write > 60
    await conn.aclose()


async def test_operation_time_limit_gives_retry_after_until_reset() -> None:
    with running_sandbox(speed=60.0, operating_cost={"crm.status.list": 500.0}) as box:
        # A huge budget on the client side: it does not pace, so the portal's 429 surfaces.
        conn = box.webhook(retry=NO_RETRY, operating_budget=1e9)
        await conn.transport.call("crm.status.list")
        reset_at = conn.transport.operating_reset_at["crm.status.list"]
        with pytest.raises(RateLimited) as info:
            await conn.transport.call("crm.status.list")
        await conn.aclose()
    assert info.value.crm_code == "OPERATION_TIME_LIMIT" and info.value.status == 429
    assert info.value.retry_after is not None
    assert 0 < info.value.retry_after <= reset_at - time.time() + 1
    assert info.value.retry_after <= 600 / 60.0 + 1  # the window runs at the sandbox's speed


async def test_insufficient_scope_names_the_missing_scope() -> None:
    with running_sandbox(scopes=("crm",)) as box:
        conn = box.webhook(retry=NO_RETRY)
        deal = box.create_deal(TITLE="x")
        with pytest.raises(AuthError) as info:
            await conn.transport.call("tasks.task.add", {"fields": {"TITLE": "t", "RESPONSIBLE_ID": 1}})
        info_check = await conn.check()
        results = await conn.create_tasks([])
        await conn.aclose()
    assert "'task'" in info.value.message and info.value.crm_code == "insufficient_scope"
    assert info_check.missing_scopes == ("task",)
    assert results == [] and deal


async def test_wrong_webhook_code_is_an_auth_error(sandbox: Sandbox) -> None:
    conn = Bitrix24Connector(webhook_url=f"{sandbox.url}/rest/1/wrongcode/", retry=NO_RETRY)
    with pytest.raises(AuthError) as info:
        await conn.check()
    assert info.value.crm_code == "NO_AUTH_FOUND"
    await conn.aclose()


async def test_validation_error_is_permanent_with_crm_text(strict: Bitrix24Connector) -> None:
    with pytest.raises(PermanentError) as info:
        await strict.transport.call("crm.status.add", {"fields": {"ENTITY_ID": "DEAL_STAGE", "NAME": "x"}})
    assert info.value.crm_text == "The field STATUS_ID is required."
    assert info.value.status == 400
    with pytest.raises(PermanentError, match="Method not found"):
        await strict.transport.call("crm.nothing.here")
    await strict.aclose()


async def test_batch_length_is_capped_by_the_portal(sandbox: Sandbox, strict: Bitrix24Connector) -> None:
    cmd = {f"c{i}": "scope" for i in range(51)}
    with pytest.raises(PermanentError) as info:
        await strict.transport.call("batch", {"halt": 0, "cmd": cmd})
    assert info.value.crm_code == "ERROR_BATCH_LENGTH_EXCEEDED"
    await strict.aclose()
