"""Contacts come from the CRM (a Bitrix24 sandbox over real HTTP) when the cache has none, and from
the cache afterwards."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from app.deals.models import Deal
from app.messages.enqueue import enqueue_notify
from app.messages.models import DealContacts
from tests.messages.conftest import NOON, Outbox
from tests.support.channels_http import RunningSmsSandbox
from tests.support.crm import crm_sandbox


async def test_contacts_are_read_from_the_crm_once_then_cached(
    outbox: Outbox, sms: RunningSmsSandbox
) -> None:
    sms.reset()
    await outbox.set_account("sms", {"api_base_url": sms.url}, {"api_id": sms.api_id})
    with crm_sandbox("bitrix24") as crm:
        crm_deal = crm.box.create_deal(TITLE="Ремонт")
        crm.box.create_contact(
            crm_deal, primary=True, NAME="Олег", PHONE=[{"VALUE": "+7 916 111-22-33", "VALUE_TYPE": "MOBILE"}]
        )
        async with outbox.sessions.begin() as session:
            await session.execute(update(Deal).values(crm_deal_id=str(crm_deal)))
            await session.delete(await session.get(DealContacts, outbox.deal_id))
        connector = crm.connector()
        try:
            first = await outbox.notify(["telegram", "sms"])
            assert (await outbox.deliver(NOON, connector)).sent == 1
            crm.box.reset_stats()
            second = await outbox.notify(["sms"], now=NOON + timedelta(hours=1))
            assert (await outbox.deliver(NOON + timedelta(hours=1), connector)).sent == 1
            assert crm.box.stats()["requests"] == 0  # the cache answered
        finally:
            await connector.aclose()
    assert [m["to"] for m in sms.messages()] == ["79161112233", "79161112233"]
    message = await outbox.message(first)
    assert message.channel == "sms" and message.text.startswith("Здравствуйте, Олег!")
    assert (await outbox.message(second)).recipient == "+7 916 111-22-33"


MANAGER_TEXT = {
    "ru": "Здравствуйте, {contact.name}! {manager.name} пришлёт подробности.",
    "en": "Hello, {contact.name}! {manager.name} will send the details.",
}


async def _notify_with_manager(outbox: Outbox, key: str) -> None:
    async with outbox.sessions.begin() as session:
        await enqueue_notify(
            session,
            connection_id=outbox.connection.id,
            deal_id=outbox.deal_id,
            automation="test",
            key=key,
            channels=["sms"],
            message=MANAGER_TEXT,
            subject=None,
            now=NOON,
        )


async def test_manager_name_is_the_responsible_users_name_from_the_crm(
    outbox: Outbox, sms: RunningSmsSandbox
) -> None:
    """{manager.name} is the deal's responsible user as the CRM's user list names them (Bitrix24
    user.get); a responsible user the CRM does not list leaves the message skipped, saying why,
    rather than sent with a gap."""
    sms.reset()
    await outbox.set_account("sms", {"api_base_url": sms.url}, {"api_id": sms.api_id})
    with crm_sandbox("bitrix24") as crm:
        connector = crm.connector()
        try:
            async with outbox.sessions.begin() as session:
                await session.execute(update(Deal).values(responsible_id="7"))
            await _notify_with_manager(outbox, "manager-known")
            assert (await outbox.deliver(NOON, connector)).sent == 1
            async with outbox.sessions.begin() as session:
                await session.execute(update(Deal).values(responsible_id="999"))
            await _notify_with_manager(outbox, "manager-unknown")
            await outbox.deliver(NOON, connector)
        finally:
            await connector.aclose()
    assert "Павел Орлов пришлёт подробности" in (await outbox.message("manager-known")).text
    unknown = await outbox.message("manager-unknown")
    assert unknown.status == "skipped" and "manager.name" in (unknown.last_error or "")
    assert len(sms.messages()) == 1
