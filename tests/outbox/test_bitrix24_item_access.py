"""A Bitrix24 deal the webhook user may not change (issue #11 item 2): the portal refuses each of
its commands inside `batch` with ACCESS_DENIED. Those commands are dead-lettered with the CRM's
text, the other deals' commands in the same drain are delivered, and the connection stays active.
Only a refusal of the whole request (a revoked webhook) pauses the connection."""

from __future__ import annotations

import pytest

from tests.outbox.conftest import Outbox


@pytest.mark.parametrize("crm", ["bitrix24"])
async def test_a_forbidden_deal_dead_letters_its_commands_and_the_rest_is_delivered(outbox: Outbox) -> None:
    locked, free = outbox.seed(2)
    outbox.box.control("POST", "/_sandbox/permissions", {"deny_edit": [int(locked)]})
    target = outbox.stages[0]
    locked_move, free_move = await outbox.enqueue_moves([locked, free], target)
    locked_note, free_note = await outbox._enqueue(
        "comment", [(d, {"crm_deal_id": d, "text": "Клиент ждёт звонка"}) for d in (locked, free)]
    )

    connector = outbox.connector()
    [result] = await outbox.drain(connector)

    assert (result.paused, result.delivered, result.dead, result.retried) == (False, 2, 2, 0)
    record = await outbox.record()
    assert (record.status, record.paused_reason) == ("active", None)
    by_id = {c.id: c for c in await outbox.commands()}
    for command_id in (locked_move, locked_note):
        command = by_id[command_id]
        assert (command.status, command.attempts, command.last_error) == ("dead", 1, "Access denied")
    assert {by_id[free_move].status, by_id[free_note].status} == {"done"}
    assert outbox.stages_of()[free] == target and outbox.stages_of()[locked] != target
    comments = outbox.box.state()["comments"]
    assert [str(c["ENTITY_ID"]) for c in comments] == [free]

    # The next drain has nothing left to do, and nothing pauses the connection.
    assert await outbox.open_count() == 0

    # A refusal of the whole request is still the account's problem: the queue pauses and the
    # commands keep their attempts for after the fix.
    outbox.box.control("POST", "/_sandbox/webhook/revoke")
    [again] = await outbox.enqueue_moves([free], outbox.stages[1])
    [paused] = await outbox.drain(connector)  # the connector still holds the old webhook URL
    assert paused.paused and (paused.delivered, paused.dead) == (0, 0)
    record = await outbox.record()
    assert record.status == "paused" and "Wrong authorization data" in (record.paused_reason or "")
    [waiting] = await outbox.commands([again])
    assert (waiting.status, waiting.attempts) == ("pending", 0)
