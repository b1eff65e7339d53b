"""TelegramChannel against the Bot API sandbox over real HTTP: sending, each error class from a
sandbox fault, flood waits, long polling and the webhook, and the token kept out of every error text
and log line. The sandbox itself is checked with raw HTTP calls shaped as the Bot API docs show."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request

from connectors.channels.base import (
    ChannelAccountRefused,
    OutgoingMessage,
    PermanentChannelError,
    RecipientUnreachable,
    TemporaryChannelError,
)
from connectors.channels.telegram import TelegramChannel
from connectors.http import RetryPolicy
from tests.support import web
from tests.support.channels import TelegramSandbox, running_telegram_sandbox
from tests.support.server import free_port, serve_asgi

CHAT = 424242
TEXT = "Здравствуйте, Иван! Ваша заявка №42 принята 👍"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[TelegramSandbox]:
    with running_telegram_sandbox() as box:
        yield box


@pytest.fixture(autouse=True)
def clean(sandbox: TelegramSandbox) -> None:
    sandbox.reset()


class RecordedSleep:
    """Stands in for asyncio.sleep: the waits a channel asked for, without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def outgoing(chat: int | str = CHAT, text: str = TEXT) -> OutgoingMessage:
    return OutgoingMessage(key="cmd-1", recipient=str(chat), text=text)


def assert_token_hidden(error: BaseException, token: str) -> None:
    """Not in the error, its traceback, or anything chained to it (a log would print those)."""
    assert token not in "".join(traceback.format_exception(error))
    seen: BaseException | None = error
    while seen is not None:
        assert token not in str(seen) and token not in repr(seen)
        request = getattr(seen, "_request", None)
        assert request is None or token not in str(request.url)
        seen = seen.__cause__ or seen.__context__


async def test_a_message_is_sent_and_its_id_is_the_receipt(sandbox: TelegramSandbox) -> None:
    channel = sandbox.channel()
    first = await channel.send(outgoing())
    second = await channel.send(outgoing(text="Второе сообщение"))
    await channel.aclose()

    sent = sandbox.messages(CHAT)
    assert [m["text"] for m in sent] == [TEXT, "Второе сообщение"]
    assert [first.provider_id, second.provider_id] == [str(m["message_id"]) for m in sent]
    assert first.provider_id != second.provider_id
    assert sent[0]["chat"]["id"] == CHAT
    assert sandbox.messages(CHAT + 1) == []


@pytest.mark.parametrize(
    ("kind", "code", "words"),
    [("blocked", "403", "bot was blocked by the user"), ("chat_not_found", "400", "chat not found")],
)
async def test_a_chat_that_cannot_be_reached_is_unreachable(
    sandbox: TelegramSandbox, kind: str, code: str, words: str
) -> None:
    sandbox.fault(kind, chat_id=CHAT)
    channel = sandbox.channel()

    with pytest.raises(RecipientUnreachable) as caught:
        await channel.send(outgoing())

    assert caught.value.code == code
    assert words in caught.value.provider_text
    assert sandbox.messages() == []
    await channel.send(outgoing(chat=CHAT + 1))  # other chats are unaffected
    await channel.aclose()


async def test_a_user_who_writes_again_unblocks_the_bot(sandbox: TelegramSandbox) -> None:
    sandbox.fault("blocked", chat_id=CHAT)
    sandbox.user_writes(CHAT, "/start")

    await sandbox.channel().send(outgoing())
    assert len(sandbox.messages(CHAT)) == 1


async def test_a_short_flood_wait_is_sat_out_and_the_send_goes_through(sandbox: TelegramSandbox) -> None:
    sandbox.fault("flood", count=2, retry_after=3)
    sleep = RecordedSleep()

    receipt = await sandbox.channel(sleep=sleep).send(outgoing())

    assert len(sleep.delays) == 2 and all(delay >= 3 for delay in sleep.delays)
    assert sandbox.calls()["sendmessage"] == 3
    assert receipt.provider_id == str(sandbox.messages(CHAT)[0]["message_id"])


async def test_a_long_flood_wait_goes_back_to_the_caller_with_retry_after(sandbox: TelegramSandbox) -> None:
    sandbox.fault("flood", count=1, retry_after=40)
    sleep = RecordedSleep()

    with pytest.raises(TemporaryChannelError) as caught:
        await sandbox.channel(sleep=sleep).send(outgoing())

    assert caught.value.retry_after == 40
    assert caught.value.code == "429"
    assert sleep.delays == []
    assert sandbox.calls()["sendmessage"] == 1


async def test_a_gateway_error_is_temporary_and_a_send_is_not_repeated(sandbox: TelegramSandbox) -> None:
    """A 502 may come after Telegram took the message: resending could deliver it twice, so the
    outbox decides. A read (getMe) is retried in place."""
    sandbox.fault("server_error", count=1, status=502)
    sleep = RecordedSleep()
    channel = sandbox.channel(sleep=sleep)

    with pytest.raises(TemporaryChannelError) as caught:
        await channel.send(outgoing())
    assert caught.value.code == "HTTP_502"
    assert sandbox.calls()["sendmessage"] == 1

    sandbox.fault("server_error", count=1, status=502)
    me = await channel.get_me()
    assert me["is_bot"] is True
    assert sandbox.calls()["getme"] == 2
    assert len(sleep.delays) == 1


async def test_a_wrong_token_is_permanent_and_never_shown(sandbox: TelegramSandbox) -> None:
    wrong = "987654321:WRONG-token_abcdefghijklmnopqrstu"
    channel = sandbox.channel(token=wrong)

    with pytest.raises(PermanentChannelError) as caught:
        await channel.send(outgoing())

    assert isinstance(caught.value, ChannelAccountRefused)
    assert caught.value.code == "401"
    assert "Unauthorized" in caught.value.provider_text
    assert_token_hidden(caught.value, wrong)
    assert wrong not in repr(channel)


async def test_the_token_stays_out_of_logs_and_network_errors(caplog: pytest.LogCaptureFixture) -> None:
    token = "555555555:SECRET-token_never-in-logs-0123456"
    sleep = RecordedSleep()
    channel = TelegramChannel(
        token,
        base_url=f"http://127.0.0.1:{free_port()}",  # nothing listens: connection refused
        retry=RetryPolicy(attempts=3, max_elapsed=60, base_delay=0.01, max_delay=1),
        sleep=sleep,
    )
    caplog.set_level(logging.DEBUG)

    with pytest.raises(TemporaryChannelError) as caught:
        await channel.send(outgoing())
    await channel.aclose()

    assert caught.value.code == "CONNECT"
    assert len(sleep.delays) == 2, "a refused connection never reached Telegram: safe to send again"
    assert_token_hidden(caught.value, token)
    assert all(token not in record.getMessage() for record in caplog.records)


async def test_request_logs_name_the_method_but_not_the_token(
    sandbox: TelegramSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    await sandbox.channel().send(outgoing())

    messages = [record.getMessage() for record in caplog.records]
    assert any("/botREDACTED/sendMessage" in message for message in messages), messages
    assert all(sandbox.token not in message for message in messages)


async def test_get_updates_delivers_user_messages_and_an_offset_confirms_them(
    sandbox: TelegramSandbox,
) -> None:
    channel = sandbox.channel()
    sandbox.user_writes(CHAT, "Хочу консультацию", first_name="Иван")
    sandbox.user_writes(CHAT + 1, "Сколько стоит?")

    updates = await channel.get_updates()
    assert [u["message"]["text"] for u in updates] == ["Хочу консультацию", "Сколько стоит?"]
    assert updates[0]["message"]["from"] == {"id": CHAT, "is_bot": False, "first_name": "Иван"}
    assert updates[1]["update_id"] == updates[0]["update_id"] + 1
    assert await channel.get_updates() == updates, "not confirmed yet: delivered again"

    after = updates[-1]["update_id"] + 1
    assert await channel.get_updates(offset=after) == []
    assert await channel.get_updates() == [], "the offset confirmed them: gone for good"

    # A long poll returns as soon as a user writes (whichever comes first, the answer is the same).
    poll = asyncio.create_task(channel.get_updates(offset=after, timeout=30))
    await asyncio.to_thread(sandbox.user_writes, CHAT, "Ещё вопрос")
    [update] = await asyncio.wait_for(poll, timeout=60)
    assert update["message"]["text"] == "Ещё вопрос" and update["update_id"] == after
    await channel.aclose()


async def test_a_long_poll_with_nothing_to_deliver_ends_empty(sandbox: TelegramSandbox) -> None:
    assert await sandbox.channel().get_updates(timeout=1) == []


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, Any], str | None]]]]:
    """A webhook receiver: records each body and its secret-token header."""
    received: list[tuple[dict[str, Any], str | None]] = []
    app = FastAPI()

    @app.post("/telegram/hook")
    async def hook(request: Request) -> dict[str, bool]:
        received.append((await request.json(), request.headers.get("x-telegram-bot-api-secret-token")))
        return {"ok": True}

    with serve_asgi(app) as url:
        yield f"{url}/telegram/hook", received


async def test_a_webhook_gets_updates_with_the_secret_and_blocks_polling(
    sandbox: TelegramSandbox, receiver: tuple[str, list[tuple[dict[str, Any], str | None]]]
) -> None:
    url, received = receiver
    channel = sandbox.channel()
    await channel.set_webhook(url, secret_token="hook-secret_1")

    result = await asyncio.to_thread(sandbox.user_writes, CHAT, "Привет")
    assert result["webhook_status"] == 200
    [(update, secret)] = received
    assert update["message"]["text"] == "Привет" and secret == "hook-secret_1"

    with pytest.raises(PermanentChannelError) as caught:
        await channel.get_updates()
    assert caught.value.code == "409"

    await channel.delete_webhook()
    assert await channel.get_updates() == [], "the webhook took the update: nothing left to poll"
    await channel.aclose()


def test_the_sandbox_answers_raw_bot_api_calls_as_documented(sandbox: TelegramSandbox) -> None:
    """Fidelity: requests shaped as core.telegram.org/bots/api shows, without our channel."""
    api = f"{sandbox.url}/bot{sandbox.token}"

    sent = web.post(f"{api}/sendMessage", json={"chat_id": CHAT, "text": TEXT}, timeout=10)
    assert sent.status_code == 200
    body = sent.json()
    assert body["ok"] is True
    message = body["result"]
    assert isinstance(message["message_id"], int) and isinstance(message["date"], int)
    assert message["chat"] == {"id": CHAT, "type": "private", "first_name": "Client"}
    assert message["from"]["is_bot"] is True and message["text"] == TEXT

    # The other ways to pass parameters, and a case-insensitive method name.
    form = web.post(f"{api}/sendmessage", data={"chat_id": str(CHAT), "text": "form"}, timeout=10)
    query = web.get(f"{api}/sendMessage", params={"chat_id": CHAT, "text": "query"}, timeout=10)
    assert form.json()["result"]["text"] == "form" and query.json()["result"]["text"] == "query"
    assert form.json()["result"]["message_id"] == message["message_id"] + 1

    me = web.get(f"{api}/getMe", timeout=10).json()
    assert me["ok"] is True and me["result"]["is_bot"] is True

    wrong = web.post(f"{sandbox.url}/bot1:nope/sendMessage", json={"chat_id": CHAT, "text": "x"}, timeout=10)
    assert (wrong.status_code, wrong.json()) == (
        401,
        {"ok": False, "error_code": 401, "description": "Unauthorized"},
    )

    empty = web.post(f"{api}/sendMessage", json={"chat_id": CHAT, "text": ""}, timeout=10)
    assert empty.status_code == 400
    assert empty.json() == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: message text is empty",
    }


def test_the_sandbox_flood_answer_carries_retry_after_in_parameters(sandbox: TelegramSandbox) -> None:
    sandbox.fault("flood", count=1, retry_after=7)
    api = f"{sandbox.url}/bot{sandbox.token}"

    flooded = web.post(f"{api}/sendMessage", json={"chat_id": CHAT, "text": "x"}, timeout=10)
    after = web.post(f"{api}/sendMessage", json={"chat_id": CHAT, "text": "x"}, timeout=10)

    assert flooded.status_code == 429
    assert flooded.json() == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7},
    }
    assert after.status_code == 200
