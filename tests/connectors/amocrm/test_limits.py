"""Rate limits and pagination, counted by the sandbox."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from connectors.amocrm import AmoCRMConnector
from connectors.base import AccountBlocked
from connectors.http import RatePolicy
from tests.connectors.amocrm.conftest import NO_RETRY, ConnectorFactory, Sandbox, running_sandbox

BURST_SPEED = 10.0  # 7 rps scaled to 70 rps on both sides: 500 calls take about 7 s
# Real-time limits (7 rps, burst 7) for tests that must exceed them: a loaded machine running the
# client and the sandbox in one process may not reach 70 rps, but always far exceeds 7.
REAL_SPEED = 1.0


@pytest.mark.timing
async def test_500_calls_in_a_burst_get_no_429(make_connector: ConnectorFactory) -> None:
    with running_sandbox(speed=BURST_SPEED) as box:
        connector = make_connector(box, retry=NO_RETRY)  # a single 429 would fail the test
        results = await asyncio.gather(*(connector.check() for _ in range(500)))
        assert len(results) == 500
        stats = box.stats()
        assert stats["statuses"] == {"200": 500}
        assert stats["total"] == 500


async def test_the_sandbox_enforces_the_limit_without_a_client_limiter(
    make_connector: ConnectorFactory,
) -> None:
    with running_sandbox(speed=REAL_SPEED) as box:
        unthrottled = make_connector(box, retry=NO_RETRY, rate=RatePolicy(per_second=10_000, burst=10_000))
        outcomes = await asyncio.gather(*(unthrottled.check() for _ in range(60)), return_exceptions=True)
        assert box.stats()["statuses"].get("429", 0) > 0
        assert any(type(o).__name__ == "RateLimited" for o in outcomes)


async def test_leads_pagination_over_600_leads_uses_3_requests(
    sandbox: Sandbox, connector: AmoCRMConnector
) -> None:
    ids = sandbox.create_leads(600)
    sandbox.reset_stats()
    pages = [
        page async for page in connector.list_deals_modified_since(datetime.now(UTC) - timedelta(hours=1))
    ]
    assert [len(p) for p in pages] == [250, 250, 100]
    assert sorted(int(d.id) for p in pages for d in p) == ids
    log = [e for e in sandbox.requests() if e["route"] == "GET /api/v4/leads"]
    assert len(log) == 3
    assert "order%5Bupdated_at%5D=asc" in log[0]["query"] and "limit=250" in log[0]["query"]
    assert "filter%5Bupdated_at%5D%5Bfrom%5D=" in log[0]["query"]
    assert "page=3" in log[2]["query"]  # followed _links.next

    sandbox.reset_stats()
    everything = [d.id for p in [p async for p in connector.list_all_deals()] for d in p]
    assert [int(i) for i in everything] == ids and sandbox.stats()["total"] == 3


async def test_204_means_empty(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    future = datetime.now(UTC) + timedelta(days=1)
    assert [page async for page in connector.list_deals_modified_since(future)] == []
    assert await connector.get_deals(["123456"]) == []
    assert await connector.list_webhooks() == []
    stats = sandbox.stats()
    assert stats["statuses"] == {"204": 3}


async def test_get_deals_packs_ids(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    ids = sandbox.create_leads(120)
    sandbox.reset_stats()
    deals = await connector.get_deals([str(i) for i in ids])
    assert sorted(int(d.id) for d in deals) == ids
    assert sandbox.stats()["requests"]["GET /api/v4/leads"] == 3  # 50 ids per request


async def test_repeated_429s_block_the_account(make_connector: ConnectorFactory) -> None:
    # One Python process serves the sandbox and runs the client, so how many of a burst arrive
    # within the sandbox's window depends on the machine: real-time limits, a low threshold and a
    # long burst make "more than the threshold refused" certain on a slow or busy machine too.
    with running_sandbox(speed=REAL_SPEED, block_after_rate_limited=2) as box:
        unthrottled = make_connector(box, retry=NO_RETRY, rate=RatePolicy(per_second=10_000, burst=10_000))
        outcomes = await asyncio.gather(*(unthrottled.check() for _ in range(150)), return_exceptions=True)
        assert any(isinstance(o, AccountBlocked) for o in outcomes)
        sent = box.stats()["total"]
        with pytest.raises(AccountBlocked):
            await unthrottled.check()
        assert box.stats()["total"] == sent and box.stats()["blocked"] is True
