"""Issue #11 item 9: a bulk create of tasks or notes that amoCRM answers 400 may have saved its valid
items (the sandbox's `partial_bulk_saves` mode). The valid items are looked up by the outbox marker
in their text before anything is resent: each exists exactly once afterwards, and the invalid one is
reported with amoCRM's own text."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import CreatedLookup, NewComment, NewTask, Retryable
from tests.connectors.amocrm.conftest import NO_RETRY, ConnectorFactory, Sandbox, running_sandbox

DUE = datetime.now(UTC) + timedelta(hours=2)
NO_CHOICE = "The value you selected is not a valid choice."


def _tasks_of(box: Sandbox, lead: int) -> Counter[str]:
    response = box.api("GET", "/api/v4/tasks", params={"filter[entity_id][]": lead})
    return (
        Counter(t["text"] for t in response.json()["_embedded"]["tasks"]) if response.content else Counter()
    )


def _notes_of(box: Sandbox, lead: int) -> Counter[str]:
    response = box.api("GET", f"/api/v4/leads/{lead}/notes")
    return (
        Counter(n["params"]["text"] for n in response.json()["_embedded"]["notes"])
        if response.content
        else Counter()
    )


def _routes(box: Sandbox) -> Counter[str]:
    return Counter(e["route"] for e in box.requests())


def _task(ref: str, lead: int, title: str, command: int, **extra: str) -> NewTask:
    # As the outbox builds it: its marker closes the description (app.outbox.items.to_item).
    return NewTask(ref, str(lead), title, DUE, description=f"[fs:{command}]", **extra)


async def test_a_task_create_answered_400_after_saving_the_valid_tasks_creates_none_twice(
    make_connector: ConnectorFactory,
) -> None:
    with running_sandbox(partial_bulk_saves=True) as box:
        [lead] = box.create_leads(1)
        connector = make_connector(box)
        tasks = [
            _task("a", lead, "Позвонить", 101),
            _task("b", lead, "Чужой ответственный", 102, responsible_id="123"),  # no such user
            _task("c", lead, "Отправить КП", 103),
        ]
        box.reset_stats()

        results = await connector.create_tasks(tasks)

        routes = _routes(box)
        assert routes["POST /api/v4/tasks"] == 1  # found, so not resent
        assert routes["GET /api/v4/tasks"] == 1  # one lookup for the whole request
        assert [r.ok for r in results] == [True, False, True]
        error = results[1].error
        assert error is not None and error.item_ref == "b" and error.status == 400
        assert error.crm_code == "NotSupportedChoice"
        assert error.crm_text == f"responsible_user_id: {NO_CHOICE}"
        held = _tasks_of(box, lead)
        assert held == {"Позвонить\n\n[fs:101]": 1, "Отправить КП\n\n[fs:103]": 1}
        # Reported with the ids amoCRM gave them in the request it answered 400.
        stored = {
            t["text"]: str(t["id"]) for t in box.api("GET", "/api/v4/tasks").json()["_embedded"]["tasks"]
        }
        assert [results[0].crm_id, results[2].crm_id] == [
            stored["Позвонить\n\n[fs:101]"],
            stored["Отправить КП\n\n[fs:103]"],
        ]


async def test_a_note_create_answered_400_after_saving_the_valid_notes_creates_none_twice(
    make_connector: ConnectorFactory,
) -> None:
    with running_sandbox(partial_bulk_saves=True) as box:
        first, second = box.create_leads(2)
        connector = make_connector(box)
        comments = [
            NewComment("a", str(first), "Сделка перешла в «Переговоры»\n[fs:201]"),
            NewComment("b", "999999", "Сделке, которой нет\n[fs:202]"),
            NewComment("c", str(second), "Клиент просил перезвонить\n[fs:203]"),
            NewComment("d", str(first), "Второй комментарий\n[fs:204]"),
        ]
        box.reset_stats()

        results = await connector.add_comments(comments)

        routes = _routes(box)
        assert routes["POST /api/v4/leads/notes"] == 1
        assert routes["GET /api/v4/leads/{id}/notes"] == 2  # one per deal, never the account's notes
        assert routes["GET /api/v4/leads/notes"] == 0
        assert [r.ok for r in results] == [True, False, True, True]
        error = results[1].error
        assert error is not None and error.item_ref == "b" and error.status == 400
        assert error.crm_text == f"entity_id: {NO_CHOICE}"
        assert _notes_of(box, first) == {
            "Сделка перешла в «Переговоры»\n[fs:201]": 1,
            "Второй комментарий\n[fs:204]": 1,
        }
        assert _notes_of(box, second) == {"Клиент просил перезвонить\n[fs:203]": 1}
        assert len({r.crm_id for r in results if r.ok}) == 3


async def test_an_all_or_nothing_400_resends_the_valid_items_once(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    """The default sandbox saves nothing on a 400: the lookup finds nothing and the valid tasks are
    resent once, without the invalid one."""
    [lead] = sandbox.create_leads(1)
    connector = make_connector(sandbox)
    tasks = [
        _task("a", lead, "Позвонить", 301),
        _task("b", lead, "Чужой ответственный", 302, responsible_id="123"),
        _task("c", lead, "Отправить КП", 303),
    ]
    sandbox.reset_stats()

    results = await connector.create_tasks(tasks)

    assert _routes(sandbox)["GET /api/v4/tasks"] == 1
    assert sandbox.stats()["batch_sizes"]["POST /api/v4/tasks"] == [3, 2]
    assert [r.ok for r in results] == [True, False, True]
    assert _tasks_of(sandbox, lead) == {"Позвонить\n\n[fs:301]": 1, "Отправить КП\n\n[fs:303]": 1}


async def test_when_the_lookup_fails_nothing_is_resent_and_the_request_is_uncertain(
    make_connector: ConnectorFactory,
) -> None:
    """If amoCRM cannot be asked what it saved, resending could duplicate and failing could drop:
    the call ends as an uncertain create (TIMEOUT), which the outbox looks up by marker later."""
    with running_sandbox(partial_bulk_saves=True) as box:
        [lead] = box.create_leads(1)
        connector = make_connector(box, retry=NO_RETRY)
        tasks = [_task("a", lead, "Позвонить", 401), _task("b", lead, "Чужой", 402, responsible_id="123")]
        box.fault("http_503", 1, method="GET /api/v4/tasks")

        with pytest.raises(Retryable) as raised:
            await connector.create_tasks(tasks)

        assert _routes(box)["POST /api/v4/tasks"] == 1
        assert raised.value.crm_code == "TIMEOUT"
        assert f"responsible_user_id: {NO_CHOICE}" in raised.value.crm_text
        assert _tasks_of(box, lead) == {"Позвонить\n\n[fs:401]": 1}
        # What the outbox's recovery does next: the saved task is found, the rejected one is not.
        lookups = [CreatedLookup("a", str(lead), "[fs:401]"), CreatedLookup("b", str(lead), "[fs:402]")]
        found = await connector.find_created("task", lookups)
        assert list(found) == ["a"]


async def test_finding_comments_reads_only_the_deals_notes(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    """The account-wide notes list documents no entity filter: looking up one deal's comment must
    not page through every note of the account (300 here, more than one page)."""
    lead, *others = sandbox.create_leads(7)
    connector = make_connector(sandbox)
    noise = [NewComment(f"n{i}", str(others[i % 6]), f"Заметка {i}") for i in range(300)]
    assert all(r.ok for r in await connector.add_comments(noise))
    [ours] = await connector.add_comments([NewComment("x", str(lead), "Наш комментарий\n[fs:501]")])
    sandbox.reset_stats()

    found = await connector.find_created("comment", [CreatedLookup("x", str(lead), "[fs:501]")])

    assert found == {"x": ours.crm_id}
    assert sandbox.stats()["total"] == 1
