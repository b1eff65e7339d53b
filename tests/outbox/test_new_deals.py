"""Deals the outbox creates (a repeat sale, a win-back, a bot's qualified lead: issue #13): created
once each in the named pipeline and stage, and a create whose answer never came back is looked up
before anything is sent again, or handed to a person when the CRM cannot tell."""

from __future__ import annotations

import pytest

from app.outbox.delivery import drain_connection
from tests.outbox.conftest import NO_DELAY, Outbox
from tests.support.matrix import each_crm_on_one_database

TITLES = ("Повторная поставка", "Предложение вернуться", "Лид из бота")


async def enqueue_deals(outbox: Outbox, stage_id: str) -> list[int]:
    payloads = [
        (str(n), {"pipeline_id": outbox.pipeline.id, "stage_id": stage_id, "title": title})
        for n, title in enumerate(TITLES)
    ]
    return await outbox._enqueue("deal", payloads)


async def crm_deals(outbox: Outbox, ids: list[str]) -> dict[str, tuple[str, str]]:
    """CRM deal id -> (stage, title), as the CRM reports them."""
    snapshots = await outbox.connector().get_deals(ids)
    return {s.id: (s.stage_id, s.title) for s in snapshots}


@each_crm_on_one_database()
async def test_new_deals_are_created_once_in_their_stage(outbox: Outbox) -> None:
    stage = outbox.stages[0]
    await enqueue_deals(outbox, stage)
    [result] = await outbox.drain(outbox.connector())
    commands = await outbox.commands()
    assert result.delivered == 3 and {c.status for c in commands} == {"done"}
    created = [str(c.crm_result_id) for c in commands]
    assert await crm_deals(outbox, created) == {
        crm_id: (stage, title) for crm_id, title in zip(created, TITLES, strict=True)
    }
    again = await drain_connection(outbox.sessions, await outbox.record(), outbox.connector())
    assert again.requests == 0  # nothing is sent twice


@pytest.mark.parametrize("crm", ["bitrix24"])
async def test_a_timed_out_create_is_found_in_the_crm_not_sent_again(outbox: Outbox) -> None:
    stage = outbox.stages[0]
    await enqueue_deals(outbox, stage)
    outbox.box.fault("timeout", count=1, method="batch", seconds=3, delay=3)
    first = await drain_connection(
        outbox.sessions, await outbox.record(), outbox.connector(timeout=0.5), retry=NO_DELAY
    )
    assert first.delivered == 0 and {c.status for c in await outbox.commands()} == {"sending"}
    await outbox.drain(outbox.connector())
    commands = await outbox.commands()
    assert {c.status for c in commands} == {"done"}
    titles = [
        title for _, title in (await crm_deals(outbox, [str(c.crm_result_id) for c in commands])).values()
    ]
    assert sorted(titles) == sorted(TITLES)
    assert outbox.box.stats()["commands"].get("crm.item.add") == 3  # each created once


@pytest.mark.parametrize("crm", ["amocrm"])
async def test_a_timed_out_create_the_crm_cannot_look_up_goes_to_a_person(outbox: Outbox) -> None:
    """amoCRM cannot find a lead by our marker: sending again could create it twice, so the command
    is dead-lettered with a reason that says what to check, and retried only by hand."""
    await enqueue_deals(outbox, outbox.stages[0])
    outbox.box.fault("timeout", count=1, method="POST /api/v4/leads", seconds=3, delay=3)
    await drain_connection(
        outbox.sessions, await outbox.record(), outbox.connector(timeout=0.5), retry=NO_DELAY
    )
    [result] = await outbox.drain(outbox.connector())
    commands = await outbox.commands()
    assert result.dead == 3 and {c.status for c in commands} == {"dead"}
    assert all("cannot say whether it created this deal" in (c.last_error or "") for c in commands)
    posts = [e for e in outbox.box.requests() if e["route"] == "POST /api/v4/leads"]
    assert len(posts) == 1  # the timed-out request only: nothing was sent blindly again
