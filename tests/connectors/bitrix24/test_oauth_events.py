"""OAuth app auth (refresh once per portal, saved before use), event.bind and the sandbox posting
real form-encoded events to a receiving app."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import pytest

from connectors.base import AuthError, StageMove, TokenSet
from connectors.bitrix24.client import Bitrix24Connector
from connectors.bitrix24.events import parse_webhook, verify_application_token
from tests.connectors.bitrix24.conftest import NO_RETRY, Receiver, Sandbox, running_sandbox
from tests.support import web


async def test_twenty_concurrent_calls_with_an_expired_token_refresh_once(sandbox: Sandbox) -> None:
    saved: list[TokenSet] = []
    uses_at_save: list[int] = []

    async def saver(tokens: TokenSet) -> None:
        # At the moment of saving, the portal must not have seen the new access token yet.
        async with web.async_client() as client:
            state = (await client.get(f"{sandbox.url}/_sandbox/oauth")).json()
        uses_at_save.append(state["token_uses"].get(tokens.access_token, 0))
        saved.append(tokens)

    conn = sandbox.oauth(saver)
    await conn.check()
    sandbox.control("POST", "/_sandbox/oauth/expire")
    results = await asyncio.gather(*(conn.check() for _ in range(20)))
    state = sandbox.control("GET", "/_sandbox/oauth")
    assert len(results) == 20 and all(r.account_id == sandbox.config.member_id for r in results)
    assert state["refreshes"] == 1 and conn.transport.refreshes == 1
    [new] = saved
    assert uses_at_save == [0]
    assert new.refresh_token == state["refresh_token"] != sandbox.config.refresh_token
    assert state["token_uses"][new.access_token] == 20  # every retried call used the saved token
    await conn.aclose()


async def test_refresh_that_does_not_help_is_an_auth_error(sandbox: Sandbox) -> None:
    saved: list[TokenSet] = []

    async def saver(tokens: TokenSet) -> None:
        saved.append(tokens)

    conn = sandbox.oauth(saver, retry=NO_RETRY)
    sandbox.fault("expired_token", count=2, method="scope")
    with pytest.raises(AuthError, match="after a refresh"):
        await conn.check()
    assert len(saved) == 1  # refreshed exactly once, then gave up
    await conn.aclose()


async def test_revoked_refresh_token_is_an_auth_error(sandbox: Sandbox) -> None:
    async def saver(tokens: TokenSet) -> None:
        raise AssertionError("nothing to save")

    conn = Bitrix24Connector(
        oauth=sandbox.oauth_app(saver, client_secret="wrong"), retry=NO_RETRY, account_key="b24test:revoked"
    )
    sandbox.control("POST", "/_sandbox/oauth/expire")
    with pytest.raises(AuthError, match="invalid_client"):
        await conn.check()
    await conn.aclose()


async def _noop_saver(tokens: TokenSet) -> None:
    return None


async def test_event_bind_register_list_unregister(sandbox: Sandbox) -> None:
    conn = sandbox.oauth(_noop_saver)
    assert conn.capabilities.webhook_registration_api is True
    sub = await conn.register_webhook("https://svc.example/b24", [])
    assert set(sub.events) == {
        "ONCRMDEALADD",
        "ONCRMDEALUPDATE",
        "ONCRMDEALDELETE",
        "ONCRMDEALMOVETOCATEGORY",
    }
    again = await conn.register_webhook("https://svc.example/b24", ["update"])  # already bound: fine
    assert again.events == ("ONCRMDEALUPDATE",)
    [listed] = await conn.list_webhooks()
    assert listed.url == "https://svc.example/b24" and len(listed.events) == 4
    await conn.unregister_webhook("https://svc.example/b24")
    assert await conn.list_webhooks() == []
    await conn.aclose()


async def test_a_partially_bound_app_binds_only_what_is_missing(sandbox: Sandbox) -> None:
    """Re-provisioning after a run that bound some events: event.get says what is there, only the
    rest is bound (binding a bound handler is an ERROR_CORE error on a real portal)."""
    conn = sandbox.oauth(_noop_saver)
    url = "https://svc.example/b24"
    await conn.register_webhook(url, ["update"])  # the earlier, interrupted run got this far
    sandbox.reset_stats()

    sub = await conn.register_webhook(url, [])

    assert set(sub.events) == {
        "ONCRMDEALADD",
        "ONCRMDEALUPDATE",
        "ONCRMDEALDELETE",
        "ONCRMDEALMOVETOCATEGORY",
    }
    stats = sandbox.stats()
    assert stats["commands"]["event.bind"] == 3 and stats["errors"] == {}
    [listed] = await conn.list_webhooks()
    assert sorted(listed.events) == sorted(sub.events)
    assert len(sandbox.state()["handlers"]) == 4
    await conn.aclose()


async def test_a_handler_bound_meanwhile_counts_as_bound(sandbox: Sandbox) -> None:
    """Another installer binds the same handler between our event.get and event.bind: the portal's
    "Handler already binded" answer means the event is bound, which is what we wanted."""
    conn = sandbox.oauth(_noop_saver)
    url = "https://svc.example/b24"
    trigger = {"method": "event.get", "action": "bind_handler", "event": "ONCRMDEALADD", "handler": url}
    sandbox.control("POST", "/_sandbox/triggers", trigger)

    sub = await conn.register_webhook(url, [])

    assert len(sub.events) == 4
    assert sandbox.stats()["errors"] == {"ERROR_CORE": 1}  # the race really happened
    handlers = sandbox.state()["handlers"]
    assert sorted(h["event"] for h in handlers) == sorted(sub.events)  # each bound once
    await conn.aclose()


async def test_bound_handler_receives_real_form_events(sandbox: Sandbox, receiver: Receiver) -> None:
    conn = sandbox.oauth(_noop_saver)
    await conn.register_webhook(f"{receiver.url}/hook", [])
    other = await conn.create_pipeline("Other", 100, [])
    deal = sandbox.create_deal(TITLE="x")  # as a user in the UI: ONCRMDEALADD
    [moved] = await conn.move_deals([StageMove("m", str(deal), other.id, f"C{other.id}:EXECUTING")])
    assert moved.ok
    received = await asyncio.to_thread(receiver.wait_for, 2)
    assert all(
        path == "/hook" and ctype == "application/x-www-form-urlencoded" for path, ctype, _ in received
    )
    forms = {parse_qs(body.decode())["event"][0]: (ctype, body) for _, ctype, body in received}
    assert sorted(forms) == ["ONCRMDEALADD", "ONCRMDEALMOVETOCATEGORY"]  # delivery order is not guaranteed
    move = parse_qs(forms["ONCRMDEALMOVETOCATEGORY"][1].decode())
    assert move["data[FIELDS][ID]"] == [str(deal)] and move["data[FIELDS][CATEGORY_ID]"] == [other.id]
    assert move["auth[application_token]"] == [sandbox.config.app_token]
    assert move["auth[member_id]"] == [sandbox.config.member_id] and move["event_handler_id"][0].isdigit()
    hook = parse_webhook(forms["ONCRMDEALMOVETOCATEGORY"][1], forms["ONCRMDEALMOVETOCATEGORY"][0])
    assert [(e.kind, e.deal_id) for e in hook.events] == [("update", str(deal))]
    assert verify_application_token(hook, sandbox.config.app_token)
    await conn.aclose()


async def test_outgoing_webhook_gets_deal_changes(receiver: Receiver) -> None:
    with running_sandbox(webhook_url=f"{receiver.url}/b24") as box:
        conn = box.webhook()
        deal = box.create_deal(TITLE="x")
        [moved] = await conn.move_deals([StageMove("m", str(deal), "0", "EXECUTING")])  # through the API
        box.control("DELETE", f"/_sandbox/deals/{deal}")
        received = await asyncio.to_thread(receiver.wait_for, 3)
        await conn.aclose()
    assert moved.ok
    events = [parse_webhook(body, ctype) for _, ctype, body in received]
    assert sorted(w.event for w in events) == ["ONCRMDEALADD", "ONCRMDEALDELETE", "ONCRMDEALUPDATE"]
    assert {e.events[0].deal_id for e in events} == {str(deal)}
    # Same shape as the real capture: no event_handler_id, no access token for an outgoing webhook.
    form = parse_qs(next(body for _, _, body in received if b"ONCRMDEALADD" in body).decode())
    assert set(form) == {
        "event",
        "data[FIELDS][ID]",
        "ts",
        "auth[domain]",
        "auth[client_endpoint]",
        "auth[server_endpoint]",
        "auth[member_id]",
        "auth[application_token]",
    }
    assert all(verify_application_token(w, box.config.app_token) for w in events)
