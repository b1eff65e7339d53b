"""A revert the CRM refuses must not be announced (issue #11 item 7), end to end against each CRM
sandbox on both databases: a person moves a deal to «Отказ» without a loss reason, the rules queue
the move back and its "moved back" comment, and the CRM refuses the move for a cause someone can fix
(Bitrix24: the stage it goes back to was deleted; amoCRM: the lead was deleted). The comment is
never sent and says why, on the API and the deal page; once the cause is fixed, a retry of the move
by hand sends the move and then the comment, and the history keeps the refused attempt."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from markupsafe import escape
from sqlalchemy import func, select

from app.connections.models import Connection
from app.outbox.delivery import DrainResult, drain_connection
from app.outbox.models import OutboxAttempt, OutboxCommand
from tests.support import web
from tests.support.matrix import each_crm_on_one_database
from tests.support.rules_bench import Bench

TOKEN = "test-token-1234567890"  # tests.support.crm.settings_for
NOT_SENT = "not sent: the move it describes failed: "
CONTACT = "Связаться с клиентом по новой заявке"


def _bitrix24_rest(bench: Bench, method: str, params: dict[str, Any]) -> Any:
    """A call an administrator's script makes through the portal's inbound webhook."""
    response = web.post(f"{bench.box.webhook_url}{method}.json", json=params, timeout=30)
    response.raise_for_status()
    return response.json()["result"]


async def _refuse_the_revert(bench: Bench, deal_id: str) -> Callable[[], Awaitable[None]]:
    """Make the CRM refuse moving the deal back to «Новая заявка» for good; returns the fix."""
    if bench.crm == "bitrix24":
        # An administrator deletes the stage (no deal is in it now). Bitrix24 names a funnel's stages
        # "C<funnel>:<code>", so adding it back with the same code gives it the same id again.
        stage_id = bench.stage_ids["NEW_REQUEST"]
        row = next(s for s in bench.box.state()["statuses"] if s["STATUS_ID"] == stage_id)
        assert _bitrix24_rest(bench, "crm.status.delete", {"id": row["ID"]}) is True
        code = stage_id.split(":", 1)[1]
        fields = {"ENTITY_ID": row["ENTITY_ID"], "STATUS_ID": code, "NAME": row["NAME"], "SORT": row["SORT"]}

        async def fix() -> None:
            _bitrix24_rest(bench, "crm.status.add", {"fields": fields})
            readded = next(s for s in bench.box.state()["statuses"] if s["NAME"] == row["NAME"])
            assert readded["STATUS_ID"] == stage_id

        return fix

    # A manager deletes the lead; amoCRM keeps it in the trash, from where it is restored.
    bench.expected_hooks += 1
    bench.box.control("POST", f"/_sandbox/deals/{deal_id}/delete")
    await bench.process()

    async def restore() -> None:
        bench.expected_hooks += 1
        bench.box.control("POST", f"/_sandbox/deals/{deal_id}/restore")
        await bench.process()

    return restore


async def _drain(bench: Bench) -> DrainResult:
    """One drain, whatever dies (Bench.drain insists nothing does); moves it delivers come back as
    webhooks (our echoes)."""

    async def moves_done() -> int:
        async with bench.p.sessions() as session:
            count = await session.scalar(
                select(func.count()).where(OutboxCommand.kind == "move", OutboxCommand.status == "done")
            )
        return int(count or 0)

    before = await moves_done()
    async with bench.p.sessions() as session:
        record = await session.get(Connection, bench.p.record.id)
    assert record is not None
    connector = bench.p.sandbox.connector()
    try:
        result = await drain_connection(bench.p.sessions, record, connector)
    finally:
        await connector.aclose()
    bench.expected_hooks += await moves_done() - before
    return result


@asynccontextmanager
async def _dashboard(bench: Bench) -> AsyncIterator[httpx.AsyncClient]:
    """A logged-in browser on FunnelSync's dashboard."""
    async with web.async_client(base_url=bench.url, timeout=30) as client:
        response = await client.post("/login", data={"token": TOKEN, "next": "/"})
        assert response.status_code == 303, response.text
        yield client


def _history_rows(page: str, command_id: int) -> str:
    """The deal page's history of one command."""
    start = page.index(f'data-history-of="{command_id}"')
    return page[start : page.index("</details>", start)]


async def _done_row(bench: Bench, command_id: int) -> int:
    async with bench.p.sessions() as session:
        row_id = await session.scalar(
            select(OutboxAttempt.id).where(
                OutboxAttempt.command_id == command_id, OutboxAttempt.outcome == "done"
            )
        )
    assert row_id is not None
    return row_id


@each_crm_on_one_database(crossed=True)
async def test_a_refused_revert_is_not_announced_and_a_retry_sends_move_then_comment(bench: Bench) -> None:
    deal_id = bench.create("Отказ без причины", "NEW_REQUEST")
    await bench.cycle()
    bench.move(deal_id, "LOST")  # «Отказ» requires a loss reason: the rules revert it
    await bench.process()
    [move] = await bench.commands(deal_id, "move")
    [comment] = await bench.commands(deal_id, "comment")
    assert comment.after_command_id == move.id
    fix = await _refuse_the_revert(bench, deal_id)

    result = await _drain(bench)

    assert (result.delivered, result.dead, result.blocked) == (0, 2, 1)
    assert bench.comments(deal_id) == []  # the CRM is never told the deal was moved back
    api = web.async_client(base_url=bench.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    async with api:
        refused = (await api.get(f"/api/outbox/{move.id}")).json()
        assert refused["status"] == "dead" and refused["last_error"]
        crm_text = refused["last_error"]
        shown = (await api.get(f"/api/outbox/{comment.id}")).json()
        assert (shown["status"], shown["attempts"]) == ("dead", 0)
        assert shown["last_error"] == NOT_SENT + crm_text
        deal = await bench.deal(deal_id)
        async with _dashboard(bench) as client:
            page = (await client.get(f"/deals/{deal.id}", params={"lang": "en"})).text
            rows = _history_rows(page, comment.id)
            assert 'data-outcome="blocked"' in rows and "not sent" in rows
            assert str(escape(NOT_SENT + crm_text)) in rows

        # Someone fixes the cause; the deal is still where the person left it.
        await fix()
        assert bench.stage_of(deal_id) == "LOST"
        retried = await api.post(f"/api/outbox/{move.id}/retry")
        assert retried.status_code == 200, retried.text

        delivered = await _drain(bench)
        await bench.process()  # our move's echo: matched to the command, it fires no rules

        assert (delivered.delivered, delivered.dead) == (2, 0)
        assert bench.stage_of(deal_id) == "NEW_REQUEST"
        [text] = bench.comments(deal_id)
        assert "«Новая заявка»" in text and "«Причина отказа»" in text
        assert [t["title"] for t in bench.tasks(deal_id)] == [CONTACT]
        move_out = (await api.get(f"/api/outbox/{move.id}")).json()
        assert [(a["attempt"], a["outcome"], a["error"]) for a in move_out["history"]] == [
            (1, "dead", crm_text),
            (None, "requeued", None),
            (2, "done", None),
        ]
        comment_out = (await api.get(f"/api/outbox/{comment.id}")).json()
        assert [(a["attempt"], a["outcome"]) for a in comment_out["history"]] == [
            (None, "blocked"),
            (None, "requeued"),
            (1, "done"),
        ]
        assert await _done_row(bench, comment.id) > await _done_row(bench, move.id)  # move, then comment
        async with _dashboard(bench) as client:
            page = (await client.get(f"/deals/{deal.id}", params={"lang": "en"})).text
            rows = _history_rows(page, move.id)
            assert 'data-outcome="dead"' in rows and 'data-outcome="done"' in rows
            assert str(escape(crm_text)) in rows  # the refused attempt survives the retry
