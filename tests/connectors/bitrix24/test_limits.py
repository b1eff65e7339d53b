"""Batch packing, the leaky bucket, the operating-time budget and fast-mode full pulls."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import NewComment, NewTask
from connectors.http import BITRIX24_STANDARD, RetryPolicy
from tests.connectors.bitrix24.conftest import NO_RETRY, running_sandbox
from tests.support import web


async def test_120_commands_go_out_in_three_batch_requests() -> None:
    with running_sandbox() as box:
        deal = box.create_deal(TITLE="t")
        conn = box.webhook()
        box.reset_stats()
        due = datetime.now(UTC) + timedelta(days=1)
        results = await conn.create_tasks([NewTask(f"t{i}", str(deal), f"Task {i}", due) for i in range(120)])
        await conn.aclose()
        stats = box.stats()
    assert stats["by_method"] == {"batch": 3}
    assert stats["commands"] == {"tasks.task.add": 120}
    assert [r.ref for r in results] == [f"t{i}" for i in range(120)] and all(r.ok for r in results)
    assert len({r.crm_id for r in results}) == 120


async def test_per_command_errors_map_to_the_item_ref() -> None:
    with running_sandbox() as box:
        deal = box.create_deal(TITLE="t")
        conn = box.webhook()
        results = await conn.add_comments(
            [
                NewComment("ok1", str(deal), "a"),
                NewComment("bad", str(deal), "   "),
                NewComment("ok2", str(deal), "b"),
            ]
        )
        await conn.aclose()
    assert [r.ok for r in results] == [True, False, True]
    error = results[1].error
    assert error is not None and error.item_ref == "bad" and error.crm_text == "Empty comment"


BURST_SPEED = 20.0


@pytest.mark.timing
async def test_burst_of_500_calls_never_hits_query_limit() -> None:
    # The client limiter runs at the sandbox's limits (2/s, burst 50) scaled by the same speed factor:
    # 20 times the real rate, where a request's own CPU time (client and sandbox) is a small share
    # of the interval between requests, as against a real portal; at 60 times it was a third.
    with running_sandbox(speed=BURST_SPEED) as box:
        conn = box.webhook(rate=BITRIX24_STANDARD.scaled(BURST_SPEED), retry=NO_RETRY)
        # Warm up first (code paths loaded and compiled on first use, connections opened): on a
        # fresh checkout that first-use pause could fall inside the burst and bunch it.
        # These calls go through the same limiter, so the burst still starts from what they used.
        await asyncio.gather(*(conn.transport.call("scope") for _ in range(5)))
        box.reset_stats()
        results = await asyncio.gather(*(conn.transport.call("scope") for _ in range(500)))
        await conn.aclose()
        stats = box.stats()
    assert len(results) == 500 and all(r["result"] == ["crm", "task", "user"] for r in results)
    assert stats["by_method"] == {"scope": 500}
    assert stats["errors"].get("QUERY_LIMIT_EXCEEDED", 0) == 0


async def test_sandbox_enforces_the_bucket_for_an_unthrottled_client() -> None:
    """The guard above means something: without the client limiter the same burst is refused."""

    with running_sandbox(speed=1.0) as box:
        async with web.async_client() as client:
            responses = await asyncio.gather(
                *(client.post(f"{box.webhook_url}scope", json={}) for _ in range(80))
            )
    refused = [r for r in responses if r.status_code == 503]
    assert refused and refused[0].json()["error"] == "QUERY_LIMIT_EXCEEDED"
    assert len(responses) - len(refused) <= 50 + 2


async def test_operating_time_is_tracked_and_a_heavy_method_is_slowed_down() -> None:
    # Each crm.deal.list costs 100 portal-seconds of the 480 s budget: after 4 calls the method is above
    # 80%; the client must wait for the window instead of running into 429 OPERATION_TIME_LIMIT.
    with running_sandbox(speed=600.0, operating_cost={"crm.deal.list": 100.0}) as box:
        conn = box.webhook(retry=NO_RETRY)
        for _ in range(7):
            await conn.transport.call("crm.deal.list", {"select": ["ID"]})
        stats = box.stats()
        await conn.aclose()
    assert conn.operating_seconds["crm.deal.list"] > 0
    assert conn.transport.operating_waits >= 1
    assert stats["errors"].get("OPERATION_TIME_LIMIT", 0) == 0
    assert stats["commands"]["crm.deal.list"] == 7


async def test_batch_commands_report_operating_time_per_method() -> None:
    with running_sandbox(operating_cost={"crm.deal.list": 3.5, "crm.status.list": 1.25}) as box:
        conn = box.webhook()
        await conn.list_pipelines()  # crm.status.list inside a batch
        await conn.count_deals_in_stages(
            (await conn.list_pipelines())[0].stages
        )  # crm.deal.list x8 in a batch
        await conn.aclose()
    assert conn.operating_seconds["crm.status.list"] >= 1.25
    assert conn.operating_seconds["crm.deal.list"] >= 8 * 3.5


async def test_fast_full_pull_costs_one_request_per_2500_deals() -> None:
    total = 6000
    with running_sandbox(speed=1000.0) as box:
        box.control("POST", "/_sandbox/deals/bulk", {"count": total})
        conn = box.webhook(retry=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.01))
        box.reset_stats()
        pages = [page async for page in conn.list_all_deals()]
        await conn.aclose()
        stats = box.stats()
    ids = [int(d.id) for page in pages for d in page]
    assert ids == list(range(1, total + 1))  # every deal once, in ID order
    assert stats["by_method"] == {"batch": math.ceil(total / 2500)}


async def test_commands_blocked_inside_a_batch_are_resent_once_after_the_reset() -> None:
    # Each task costs 100 s of the 480 s budget: in one batch the 6th command onwards is refused with
    # OPERATION_TIME_LIMIT in result_error. Nothing was applied for those, so the connector waits for
    # the window (1 s at speed 600) and resends only them: every task exists exactly once.
    with running_sandbox(speed=600.0, operating_cost={"tasks.task.add": 100.0}) as box:
        deal = box.create_deal(TITLE="t")
        conn = box.webhook(operating_budget=1e9)  # no pacing: let the portal refuse inside the batch
        due = datetime.now(UTC) + timedelta(days=1)
        results = await conn.create_tasks([NewTask(f"t{i}", str(deal), f"Task {i}", due) for i in range(8)])
        await conn.aclose()
        stats = box.stats()
        titles = sorted(t["title"] for t in box.state()["tasks"])
    assert all(r.ok for r in results) and [r.ref for r in results] == [f"t{i}" for i in range(8)]
    assert titles == sorted(f"Task {i}" for i in range(8))
    assert stats["errors"]["OPERATION_TIME_LIMIT"] == 3 and stats["commands"]["tasks.task.add"] == 8
    assert stats["by_method"]["batch"] == 2
