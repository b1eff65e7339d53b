"""The retry API over real HTTP: a dead command is replayed by hand (one, or a filtered set), a drain
delivers it, and a command that is already done cannot be retried."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from app.main import create_app
from app.outbox.delivery import RetrySettings
from tests.outbox.conftest import OUTAGE_FAULT, Outbox
from tests.support import web
from tests.support.matrix import each_crm_on_one_database
from tests.support.server import serve_asgi

ONE_ATTEMPT = RetrySettings(max_attempts=1, base_delay=timedelta(0), max_delay=timedelta(0))
TITLE = "Перезвонить клиенту"


@pytest.fixture
async def api(outbox: Outbox) -> AsyncIterator[httpx.AsyncClient]:
    with serve_asgi(create_app(outbox.settings)) as url:
        headers = {"Authorization": "Bearer test-token-1234567890"}
        async with web.async_client(base_url=url, headers=headers, timeout=30) as client:
            yield client


@each_crm_on_one_database(crossed=True)
async def test_dead_commands_are_replayed_by_hand(outbox: Outbox, api: httpx.AsyncClient) -> None:
    deals = outbox.seed(3)
    target = outbox.stages[0]
    moves = await outbox.enqueue_moves(deals, target)
    tasks = await outbox.enqueue_tasks(deals, TITLE)
    # An outage longer than the retry budget (one attempt here): everything is dead-lettered.
    outbox.box.fault(OUTAGE_FAULT[outbox.crm], count=1000)
    [result] = await outbox.drain(outbox.connector(), retry=ONE_ATTEMPT)
    outbox.sandbox.clear_faults()
    assert result.dead == 6
    dead = (await api.get("/api/outbox", params={"status": "dead", "connection": outbox.crm})).json()
    assert sorted(c["id"] for c in dead) == sorted(moves + tasks)
    assert all(c["last_error"] for c in dead)

    one = await api.post(f"/api/outbox/{moves[0]}/retry")
    assert one.status_code == 200, one.text
    assert (one.json()["status"], one.json()["attempts"]) == ("pending", 0)
    many = await api.post("/api/outbox/retry", json={"kind": "task", "status": "dead"})
    assert many.status_code == 200 and many.json() == {"retried": 3}

    [result] = await outbox.drain(outbox.connector())

    assert (result.delivered, result.dead) == (4, 0)
    by_id = {c.id: c for c in await outbox.commands()}
    assert [by_id[i].status for i in moves] == ["done", "dead", "dead"]  # only what was replayed
    assert {by_id[i].status for i in tasks} == {"done"}
    stages = outbox.stages_of()
    assert stages[deals[0]] == target and target not in (stages[deals[1]], stages[deals[2]])
    assert outbox.tasks() == {(d, TITLE): 1 for d in deals}

    done = await api.post(f"/api/outbox/{moves[0]}/retry")
    assert done.status_code == 409 and "done" in done.json()["detail"]
    by_ids = await api.post("/api/outbox/retry", json={"ids": [moves[1], moves[0]]})
    assert by_ids.json() == {"retried": 1}  # the done one is not touched
    assert (await api.post("/api/outbox/999999/retry")).status_code == 404
    assert (await api.post("/api/outbox/retry", json={"connection": "nope"})).status_code == 404
    assert (await api.post("/api/outbox/retry", json={"status": "done"})).status_code == 422

    [result] = await outbox.drain(outbox.connector())
    assert result.delivered == 1
    assert [c.status for c in await outbox.commands(moves)] == ["done", "done", "dead"]
    assert outbox.applied_writes("move") == 2 and outbox.applied_writes("task") == 3
