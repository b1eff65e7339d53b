"""Delivery over the real protocols: each channel end to end, the policy (quiet hours, the daily
limit, opt-outs), the provider's refusals, and never sending twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from app.messages import accounts
from app.messages.enqueue import enqueue_notify
from app.messages.models import ChannelAccount, Message, OptOut
from app.messages.statuses import ChannelAccountStatus, MessageStatus, OptOutSource
from connectors.base import ContactInfo
from tests.messages.conftest import NOON, Outbox
from tests.support.channels import SmtpSandbox, TelegramSandbox
from tests.support.channels_http import RunningReceiver, RunningSmsSandbox


async def test_each_channel_delivers_end_to_end(
    outbox: Outbox,
    smtp: SmtpSandbox,
    telegram: TelegramSandbox,
    sms: RunningSmsSandbox,
    receiver: RunningReceiver,
) -> None:
    for box in (smtp, telegram, sms, receiver):
        box.reset()
    await outbox.set_account(
        "email",
        {
            "host": smtp.smtp_host,
            "port": smtp.smtp_port,
            "sender": "Сервис <noreply@funnelsync.test>",
            "security": "none",
        },
        {},
    )
    await outbox.set_account("telegram", {"api_base_url": telegram.url}, {"bot_token": telegram.token})
    await outbox.set_account("sms", {"api_base_url": sms.url}, {"api_id": sms.api_id})
    await outbox.set_account("webhook", {"url": receiver.hook_url}, {"signing_secret": receiver.secret})
    keys = {
        "email": await outbox.notify(["email"]),
        "telegram": await outbox.notify(["telegram", "sms"]),
        "sms": await outbox.notify(["sms"]),
        "webhook": await outbox.webhook(),
    }

    result = await outbox.deliver()

    assert result.sent == 4, result
    [mail] = smtp.messages()
    assert mail["rcpt_tos"] == ["ivan@example.ru"] and mail["subject"] == "Ваша заявка"
    assert mail["text"].startswith("Здравствуйте, Иван! Сделка «Ремонт».")
    assert "/opt-out/" in mail["text"]
    [chat] = telegram.messages(chat_id=700100)
    assert chat["text"].startswith("Здравствуйте, Иван!")
    [text] = sms.messages()
    assert text["to"] == "79255070602" and "Отписаться" in text["msg"]
    [delivery] = receiver.deliveries()
    assert delivery["payload"]["type"] == "visit.reminder" and delivery["payload"]["data"] == {
        "deal": "Ремонт"
    }
    for channel, key in keys.items():
        message = await outbox.message(key)
        assert (message.status, message.channel, message.sent_at) == (MessageStatus.SENT, channel, NOON)
        assert message.provider_id
    assert (await outbox.deliver(NOON + timedelta(hours=1))).sent == 0  # nothing goes twice


async def _telegram(outbox: Outbox, telegram: TelegramSandbox) -> None:
    telegram.reset()
    await outbox.set_account("telegram", {"api_base_url": telegram.url}, {"bot_token": telegram.token})


async def test_quiet_hours_defer_until_they_end(outbox: Outbox, telegram: TelegramSandbox) -> None:
    await _telegram(outbox, telegram)
    await outbox.policy(quiet_hours="21:00-09:00", timezone="Europe/Moscow")
    late_evening = NOON + timedelta(hours=10)  # 22:00 in Moscow
    key = await outbox.notify(["telegram"], now=late_evening)

    assert (await outbox.deliver(late_evening)).deferred == 1
    waiting = await outbox.message(key)
    assert waiting.status == MessageStatus.QUEUED
    assert waiting.next_attempt_at == NOON + timedelta(hours=21)  # 09:00 in Moscow the next morning
    assert telegram.messages() == []
    assert (await outbox.deliver(waiting.next_attempt_at)).sent == 1
    assert len(telegram.messages(chat_id=700100)) == 1


async def test_the_daily_limit_defers_to_the_next_local_day(
    outbox: Outbox, telegram: TelegramSandbox
) -> None:
    await _telegram(outbox, telegram)
    await outbox.policy(daily_limit=2, quiet_hours="")
    keys = [await outbox.notify(["telegram"]) for _ in range(3)]

    result = await outbox.deliver()

    assert (result.sent, result.deferred) == (2, 1)
    third = await outbox.message(keys[2])
    assert third.status == MessageStatus.QUEUED and "2 message(s) a day" in (third.last_error or "")
    assert third.next_attempt_at == datetime(2026, 3, 10, 21, 0, tzinfo=UTC)  # midnight in Moscow
    assert (await outbox.deliver(NOON + timedelta(hours=1))).sent == 0
    assert (await outbox.deliver(third.next_attempt_at)).sent == 1
    assert len(telegram.messages()) == 3


async def test_the_first_reachable_channel_is_chosen_and_no_address_is_skipped(
    outbox: Outbox, telegram: TelegramSandbox, sms: RunningSmsSandbox
) -> None:
    await _telegram(outbox, telegram)
    sms.reset()
    await outbox.set_account("sms", {"api_base_url": sms.url}, {"api_id": sms.api_id})
    await outbox.contacts(ContactInfo("9", "Анна", phones=("+79000000001",), is_primary=True))
    to_sms = await outbox.notify(["telegram", "sms"])
    nowhere = await outbox.notify(["telegram"])

    await outbox.deliver()

    assert (await outbox.message(to_sms)).channel == "sms" and len(sms.messages()) == 1
    skipped = await outbox.message(nowhere)
    assert skipped.status == MessageStatus.SKIPPED and "no address" in (skipped.last_error or "")
    assert telegram.messages() == []


async def test_a_blocked_bot_records_the_contact_as_unreachable(
    outbox: Outbox, telegram: TelegramSandbox
) -> None:
    await _telegram(outbox, telegram)
    telegram.fault("blocked", chat_id=700100)
    first = await outbox.notify(["telegram"])

    await outbox.deliver()

    assert (await outbox.message(first)).status == MessageStatus.DEAD
    async with outbox.sessions() as session:
        [opt_out] = list(await session.scalars(select(OptOut)))
    assert (opt_out.channel, opt_out.address, opt_out.source) == (
        "telegram",
        "700100",
        OptOutSource.UNREACHABLE,
    )
    telegram.clear_faults()
    second = await outbox.notify(["telegram"])
    await outbox.deliver()
    assert (await outbox.message(second)).status == MessageStatus.SKIPPED
    assert telegram.messages() == []


async def test_a_refused_account_is_paused_and_resume_sends(outbox: Outbox, sms: RunningSmsSandbox) -> None:
    sms.reset()
    sms.control("POST", "/config", {"no_money": True})
    await outbox.set_account("sms", {"api_base_url": sms.url}, {"api_id": sms.api_id})
    keys = [await outbox.notify(["sms"]) for _ in range(2)]

    result = await outbox.deliver()

    assert result.paused_accounts == ["sms"] and result.sent == 0
    async with outbox.sessions() as session:
        account = await session.scalar(select(ChannelAccount).where(ChannelAccount.channel == "sms"))
    assert account is not None and account.status == ChannelAccountStatus.PAUSED
    assert "201" in (account.paused_reason or "")  # SMS.ru: not enough money
    for key in keys:  # waiting, not dead
        assert (await outbox.message(key)).status == MessageStatus.QUEUED
    sms.control("POST", "/config", {"no_money": False})
    assert (await outbox.deliver(NOON + timedelta(minutes=5))).sent == 0  # still paused
    async with outbox.sessions.begin() as session:
        await accounts.resume_account(session, outbox.connection, "sms")
    assert (await outbox.deliver(NOON + timedelta(minutes=10))).sent == 2
    assert len(sms.messages()) == 2


async def test_a_temporary_failure_is_retried_then_dead_when_out_of_attempts(
    outbox: Outbox, receiver: RunningReceiver
) -> None:
    receiver.reset()
    await outbox.set_account("webhook", {"url": receiver.hook_url}, {"signing_secret": receiver.secret})
    receiver.fault(status=500, count=1)
    retried = await outbox.webhook()
    assert (await outbox.deliver()).retried == 1
    assert (await outbox.message(retried)).status == MessageStatus.FAILED
    assert (await outbox.deliver(NOON + timedelta(seconds=1))).sent == 1

    receiver.fault(status=503, count=10)
    dead = await outbox.webhook(now=NOON + timedelta(minutes=1))
    for minute in range(2, 5):  # NO_DELAY allows 3 attempts
        await outbox.deliver(NOON + timedelta(minutes=minute))
    message = await outbox.message(dead)
    assert (message.status, message.attempts) == (MessageStatus.DEAD, 3)
    assert "503" in (message.last_error or "")


async def test_two_concurrent_runs_send_each_message_once(outbox: Outbox, telegram: TelegramSandbox) -> None:
    await _telegram(outbox, telegram)
    await outbox.policy(daily_limit=50)
    for _ in range(6):
        await outbox.notify(["telegram"])

    first, second = await asyncio.gather(outbox.deliver(), outbox.deliver())

    assert first.sent + second.sent == 6
    assert len(telegram.messages()) == 6


async def test_a_message_left_sending_by_a_dead_worker_is_not_sent_blindly(
    outbox: Outbox, telegram: TelegramSandbox, receiver: RunningReceiver
) -> None:
    await _telegram(outbox, telegram)
    receiver.reset()
    await outbox.set_account("webhook", {"url": receiver.hook_url}, {"signing_secret": receiver.secret})
    chat = await outbox.notify(["telegram"])
    hook = await outbox.webhook()
    await outbox.deliver()  # both sent once
    async with outbox.sessions.begin() as session:  # as if a worker had died mid-request
        await session.execute(
            update(Message).values(status=MessageStatus.SENDING, next_attempt_at=NOON + timedelta(minutes=10))
        )

    await outbox.deliver(NOON + timedelta(minutes=5))  # the crashed requests are not yet abandoned
    assert (await outbox.message(chat)).status == MessageStatus.SENDING
    await outbox.deliver(NOON + timedelta(minutes=20))

    lost = await outbox.message(chat)
    assert lost.status == MessageStatus.DEAD and "may have been delivered" in (lost.last_error or "")
    assert len(telegram.messages()) == 1
    assert (await outbox.message(hook)).status == MessageStatus.SENT
    assert receiver.stats()["repeats"] == 1  # resent with the same webhook-id: the receiver dropped it


async def test_a_key_is_queued_once(outbox: Outbox) -> None:
    key = await outbox.notify(["telegram"])
    async with outbox.sessions.begin() as session:
        again = await enqueue_notify(
            session, connection_id=outbox.connection.id, deal_id=outbox.deal_id, automation="test", key=key,
            channels=["sms"], message={"ru": "x", "en": "x"}, subject=None, now=NOON,
        )  # fmt: skip
        assert again is False
        assert await session.scalar(select(func.count(Message.id))) == 1
        with pytest.raises(ValueError, match="subject"):
            await enqueue_notify(
                session, connection_id=outbox.connection.id, deal_id=outbox.deal_id, automation="test",
                key="other", channels=["email"], message={"ru": "x", "en": "x"}, subject=None, now=NOON,
            )  # fmt: skip
