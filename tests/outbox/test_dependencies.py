"""Dependent commands and the attempt history, against each sandbox on each database: a comment that
describes a move waits for the move, follows it in the same drain once it is done, is never sent
when the move is dead (dead-lettered with the reason instead), and goes again with the move when
the move is retried by hand; every attempt stays in the command's history across manual retries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

from app.main import create_app
from app.outbox.delivery import DrainResult, RetrySettings, drain_connection
from app.outbox.enqueue import enqueue
from app.outbox.models import OutboxAttempt, OutboxCommand
from app.outbox.retry import retry_matching
from tests.outbox.conftest import API_AUTH, CONNECTOR_RETRY, DUE, NO_DELAY, Outbox
from tests.support import web
from tests.support.matrix import each_crm_on_one_database
from tests.support.server import serve_asgi

MOVED = "Сделка возвращена на этап «Новая заявка»"
LATER = datetime(2100, 1, 1, tzinfo=UTC)  # a backoff that has not run out
# The move's request answers 503 (the CRM is down for it): long enough to use up the connector's
# own retries, so the outbox records a failed attempt. Bitrix24 sends moves and comments through
# `batch`, so there the fault is counted to end with the move's request.
MOVE_OUTAGE: dict[str, tuple[str, str, int]] = {  # (fault kind, request it hits, how many times)
    "bitrix24": ("http_503", "batch", CONNECTOR_RETRY.attempts),
    "amocrm": ("http_503", "PATCH /api/v4/leads", 1000),
}


@pytest.fixture
async def api(outbox: Outbox) -> AsyncIterator[httpx.AsyncClient]:
    with serve_asgi(create_app(outbox.settings)) as url:
        async with web.async_client(base_url=url, headers=API_AUTH, timeout=30) as client:
            yield client


async def _drain(outbox: Outbox, retry: RetrySettings = NO_DELAY) -> DrainResult:
    """One drain, exactly (Outbox.drain loops until nothing is open, which a waiting command is)."""
    return await drain_connection(outbox.sessions, await outbox.record(), outbox.connector(), retry=retry)


async def _command(outbox: Outbox, command_id: int) -> OutboxCommand:
    [command] = await outbox.commands([command_id])
    return command


async def _history(outbox: Outbox, command_id: int) -> list[OutboxAttempt]:
    async with outbox.sessions() as session:
        rows = await session.scalars(
            select(OutboxAttempt).where(OutboxAttempt.command_id == command_id).order_by(OutboxAttempt.id)
        )
        return list(rows)


@each_crm_on_one_database()
async def test_a_comment_waits_for_its_move_and_follows_it_in_the_same_drain(outbox: Outbox) -> None:
    deal, other = outbox.seed(2)
    target = outbox.stages[0]
    [move] = await outbox.enqueue_moves([deal], target)
    comment = await outbox.enqueue_comment(deal, MOVED, after=move)
    await outbox.enqueue_comment(other, "Просто заметка")  # waits for nothing: goes at once
    async with outbox.sessions.begin() as session:
        await session.execute(
            update(OutboxCommand).where(OutboxCommand.id == move).values(next_attempt_at=LATER)
        )

    # The move is pending (not due): its comment, due itself, is not sent and uses no attempt.
    first = await _drain(outbox)
    assert (first.delivered, first.blocked) == (1, 0)
    waiting = await _command(outbox, comment)
    assert (waiting.status, waiting.attempts, waiting.last_error) == ("pending", 0, None)
    assert await _history(outbox, comment) == []
    assert outbox.comments() == {(other, "Просто заметка"): 1}

    # The move is sent and fails for now (the CRM is down for it): the comment still waits.
    async with outbox.sessions.begin() as session:
        await session.execute(
            update(OutboxCommand).where(OutboxCommand.id == move).values(next_attempt_at=DUE)
        )
    kind, method, count = MOVE_OUTAGE[outbox.crm]
    outbox.box.fault(kind, count=count, method=method)
    second = await _drain(outbox)
    outbox.sandbox.clear_faults()
    assert (second.retried, second.delivered) == (1, 0)
    assert (await _command(outbox, move)).status == "failed"
    still = await _command(outbox, comment)
    assert (still.status, still.attempts) == ("pending", 0)
    assert (deal, MOVED) not in outbox.comments()

    # The move goes through: the comment follows in the same drain, after it.
    await outbox.make_due()
    third = await _drain(outbox)
    assert third.delivered == 2
    assert {c.status for c in await outbox.commands([move, comment])} == {"done"}
    assert outbox.stages_of()[deal] == target
    assert outbox.comments() == {(other, "Просто заметка"): 1, (deal, MOVED): 1}
    [move_done] = [a for a in await _history(outbox, move) if a.outcome == "done"]
    [comment_done] = await _history(outbox, comment)
    assert comment_done.outcome == "done" and comment_done.id > move_done.id


@each_crm_on_one_database(crossed=True)
async def test_a_comment_about_a_refused_move_is_never_sent_and_says_why(outbox: Outbox) -> None:
    [deal] = outbox.seed(1)
    initial = outbox.stages_of()[deal]
    foreign = await outbox.foreign_stage()  # the CRM refuses this move permanently (validation)
    [move] = await outbox.enqueue_moves([deal], foreign)
    comment = await outbox.enqueue_comment(deal, MOVED, after=move)

    result = await _drain(outbox)

    assert (result.delivered, result.dead, result.blocked) == (0, 2, 1)
    refused = await _command(outbox, move)
    assert refused.status == "dead" and refused.last_error
    blocked = await _command(outbox, comment)
    reason = f"not sent: the move it describes failed: {refused.last_error}"
    assert (blocked.status, blocked.attempts, blocked.last_error) == ("dead", 0, reason)
    assert [(a.outcome, a.attempt, a.error) for a in await _history(outbox, comment)] == [
        ("blocked", None, reason)
    ]
    assert outbox.comments() == {}  # the CRM never hears of a move that did not happen
    assert outbox.stages_of()[deal] == initial

    # Retrying the move by hand (bulk) takes its comment along; refused again, it stays unsent.
    async with outbox.sessions.begin() as session:
        assert await retry_matching(session, ids=[move]) == 2
    assert {c.status for c in await outbox.commands([move, comment])} == {"pending"}
    again = await _drain(outbox)
    assert (again.dead, again.blocked) == (2, 1)
    assert [a.outcome for a in await _history(outbox, comment)] == ["blocked", "requeued", "blocked"]
    assert [(a.outcome, a.attempt) for a in await _history(outbox, move)] == [
        ("dead", 1),
        ("requeued", None),
        ("dead", 2),
    ]
    assert outbox.comments() == {}


@each_crm_on_one_database()
async def test_a_manual_retry_sends_the_move_then_its_comment_and_keeps_the_history(
    outbox: Outbox, api: httpx.AsyncClient
) -> None:
    [deal] = outbox.seed(1)
    target = outbox.stages[0]
    [move] = await outbox.enqueue_moves([deal], target)
    comment = await outbox.enqueue_comment(deal, MOVED, after=move)
    kind, method, count = MOVE_OUTAGE[outbox.crm]
    two_attempts = RetrySettings(max_attempts=2, base_delay=timedelta(0), max_delay=timedelta(0))
    # Bitrix24's fault is counted per request: enough for both attempts of the move.
    outbox.box.fault(kind, count=count * 2 if outbox.crm == "bitrix24" else count, method=method)
    results = await outbox.drain(outbox.connector(), retry=two_attempts)
    outbox.sandbox.clear_faults()  # the outage is over
    assert [(r.retried, r.dead, r.blocked) for r in results] == [(1, 0, 0), (0, 2, 1)]
    assert (deal, MOVED) not in outbox.comments()

    dead = (await api.get(f"/api/outbox/{move}")).json()
    assert dead["status"] == "dead" and dead["attempts"] == 2
    outage_text = dead["last_error"]
    assert outage_text
    shown = (await api.get(f"/api/outbox/{comment}")).json()
    assert shown["after_command_id"] == move and shown["status"] == "dead"
    assert shown["last_error"] == f"not sent: the move it describes failed: {outage_text}"

    retried = await api.post(f"/api/outbox/{move}/retry")
    assert retried.status_code == 200, retried.text
    assert (retried.json()["status"], retried.json()["attempts"]) == ("pending", 0)
    assert (await api.get(f"/api/outbox/{comment}")).json()["status"] == "pending"  # went with it

    [result] = await outbox.drain(outbox.connector())

    assert result.delivered == 2
    assert outbox.stages_of()[deal] == target
    assert outbox.comments() == {(deal, MOVED): 1}
    move_out = (await api.get(f"/api/outbox/{move}")).json()
    assert (move_out["status"], move_out["attempts"], move_out["last_error"]) == ("done", 1, None)
    assert [(a["attempt"], a["outcome"], a["error"], a["batch_size"]) for a in move_out["history"]] == [
        (1, "failed", outage_text, 1),
        (2, "dead", outage_text, 1),
        (None, "requeued", None, None),
        (3, "done", None, 1),
    ]
    comment_out = (await api.get(f"/api/outbox/{comment}")).json()
    assert [(a["attempt"], a["outcome"]) for a in comment_out["history"]] == [
        (None, "blocked"),
        (None, "requeued"),
        (1, "done"),
    ]
    assert comment_out["history"][0]["error"].startswith("not sent: the move it describes failed: ")
    [move_done] = [a for a in await _history(outbox, move) if a.outcome == "done"]
    comment_done = (await _history(outbox, comment))[-1]
    assert comment_done.id > move_done.id  # the move first, then the comment
    assert (await api.get("/api/outbox/999999")).status_code == 404


@pytest.mark.parametrize("crm", ["bitrix24"])
async def test_a_prerequisite_must_exist_on_the_same_connection(outbox: Outbox) -> None:
    other = outbox.sandbox.connection(outbox.settings, name="other")
    async with outbox.sessions.begin() as session:
        session.add(other)
    [deal] = outbox.seed(1)
    [move] = await outbox.enqueue_moves([deal], outbox.stages[0])
    payload = {"crm_deal_id": deal, "text": MOVED}
    for connection_id, after, words in (
        (outbox.connection_id, 999999, "does not exist"),
        (other.id, move, "another connection"),
    ):
        with pytest.raises(ValueError, match=words):
            async with outbox.sessions.begin() as session:
                await enqueue(
                    session,
                    connection_id=connection_id,
                    kind="comment",
                    payload=payload,
                    idempotency_key=f"bad:{after}",
                    after_command_id=after,
                )
    async with outbox.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(OutboxCommand)) == 1  # the move
