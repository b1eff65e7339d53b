"""The sandbox posts webhooks in amoCRM's wire format to a real receiving app; parse_webhook reads
them; failing destinations are retried and then disabled like the real CRM does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from connectors.amocrm import AmoCRMConnector, parse_webhook
from connectors.base import NewField, StageMove
from tests.connectors.amocrm.conftest import ConnectorFactory, Sandbox, running_receiver, running_sandbox

EVENTS = ("add_lead", "update_lead", "status_lead", "delete_lead", "restore_lead", "responsible_lead")


async def _eventually(check: Callable[[], bool], attempts: int = 500) -> None:
    """Wait for state another thread changes (the sandbox's background delivery)."""
    for _ in range(attempts):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_api_change_posts_a_parsable_webhook(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    main = sandbox.main_pipeline()
    with running_receiver() as receiver:
        await connector.register_webhook(receiver.url, EVENTS)
        ids = sandbox.create_leads(3)
        results = await connector.move_deals([StageMove(str(i), str(i), str(main["id"]), "142") for i in ids])
        assert all(r.ok for r in results)
        [(body, content_type)] = await asyncio.to_thread(receiver.wait_for, 1)
    assert content_type == "application/x-www-form-urlencoded"
    assert b"leads%5Bstatus%5D%5B2%5D%5Bid%5D=" in body  # PHP-style nested keys, several leads
    hook = parse_webhook(body, content_type)
    assert (hook.account_id, hook.subdomain) == (str(sandbox.config.account_id), sandbox.config.subdomain)
    kinds = sorted((e.kind, e.deal_id) for e in hook.events)
    assert kinds == sorted([("update", str(i)) for i in ids] + [("status", str(i)) for i in ids])
    for event in hook.events:
        assert event.snapshot is not None
        assert (event.snapshot.stage_id, event.snapshot.pipeline_id, event.snapshot.closed) == (
            "142",
            str(main["id"]),
            True,
        )
        lead = sandbox.lead(event.deal_id)
        assert int(event.snapshot.updated_at.timestamp()) == lead["updated_at"]
    # The webhook and the REST API describe the lead alike, so the mirror sees no false change.
    [deal] = await connector.get_deals([str(ids[0])])
    from_hook = next(e.snapshot for e in hook.events if e.deal_id == str(ids[0]))
    assert from_hook == deal


async def test_user_actions_post_each_kind(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    [field] = await connector.create_fields([NewField("src", "Источник", "enum", ("Сайт", "Звонок"))])
    with running_receiver() as receiver:
        await connector.register_webhook(receiver.url, EVENTS)
        lead = sandbox.create_lead(
            name="Из UI",
            price=100,
            custom_fields_values=[{"field_id": int(field.id), "values": [{"value": "Звонок"}]}],
        )
        await asyncio.to_thread(receiver.wait_for, 1)
        sandbox.control("POST", f"/_sandbox/deals/{lead['id']}/update", {"responsible_user_id": 8_000_001})
        await asyncio.to_thread(receiver.wait_for, 2)
        sandbox.control("POST", f"/_sandbox/deals/{lead['id']}/delete")
        await asyncio.to_thread(receiver.wait_for, 3)
        sandbox.control("POST", f"/_sandbox/deals/{lead['id']}/restore")
        posts = await asyncio.to_thread(receiver.wait_for, 4)
    parsed = [parse_webhook(body, ctype) for body, ctype in posts]
    assert [[e.kind for e in p.events] for p in parsed] == [
        ["add"],
        ["update", "responsible"],
        ["delete"],
        ["restore"],
    ]
    added = parsed[0].events[0].snapshot
    assert added is not None and added.title == "Из UI" and added.fields == {field.id: "Звонок"}
    responsible = parsed[1].events[1].snapshot
    assert responsible is not None and responsible.responsible_id == "8000001"
    assert parsed[2].events[0].snapshot is None  # a delete carries only id, status and pipeline
    keys = [e.dedupe_key for p in parsed for e in p.events]
    assert len(set(keys)) == len(keys)


async def test_failing_destination_is_retried_then_disabled(make_connector: ConnectorFactory) -> None:
    # speed 1000: the 5 min / 15 min retry schedule takes a few tenths of a second.
    with (
        running_sandbox(speed=1000, webhook_disable_after=3) as box,
        running_receiver(status=500) as failing,
        running_receiver() as healthy,
    ):
        connector = make_connector(box)
        await connector.register_webhook(failing.url, EVENTS)
        await connector.register_webhook(healthy.url, EVENTS)
        box.create_lead(name="A")
        await asyncio.to_thread(failing.wait_for, 4)  # first try + retries after 5, 15, 15 min
        await _eventually(lambda: box.stats()["webhooks"].get("disabled") == 1)
        hooks = {h.url: h for h in await connector.list_webhooks()}
        assert hooks[failing.url].disabled and not hooks[healthy.url].disabled
        attempts = [
            d["attempt"] for d in box.control("GET", "/_sandbox/webhooks/deliveries") if d["status"] == 500
        ]
        assert attempts == [1, 2, 3, 4]

        box.create_lead(name="B")
        await asyncio.to_thread(healthy.wait_for, 2)
        assert len(failing.posts) == 4  # a disabled destination gets nothing

        await connector.register_webhook(failing.url, EVENTS)  # subscribing again switches it back on
        assert not {h.url: h for h in await connector.list_webhooks()}[failing.url].disabled
