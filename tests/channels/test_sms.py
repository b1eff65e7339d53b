"""SmsRuChannel against the SMS.ru sandbox over real HTTP: what it sends, how each of SMS.ru's
answers becomes a Receipt or an error of the right kind, and that the api_id never leaks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from connectors.channels.base import (
    ChannelAccountRefused,
    PermanentChannelError,
    RecipientUnreachable,
    TemporaryChannelError,
)
from connectors.channels.sms import SmsRuChannel, normalise_phone
from tests.support.channels_http import FAST_SMS_RETRY, RunningSmsSandbox, message, running_sms_sandbox
from tests.support.server import free_port

API_ID = "A3CA597E-3ACF-4E7D-82EE-CF82B52B1A8B"  # the shape of a real SMS.ru api_id
NUMBER = "79255070602"


@pytest.fixture(scope="module")
def sms_server() -> Iterator[RunningSmsSandbox]:
    with running_sms_sandbox(api_id=API_ID) as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(sms_server: RunningSmsSandbox) -> Iterator[RunningSmsSandbox]:
    sms_server.reset()
    yield sms_server
    sms_server.reset()  # also ends a request a test left hanging


@pytest.fixture
async def channel(sandbox: RunningSmsSandbox) -> AsyncIterator[SmsRuChannel]:
    sms = SmsRuChannel(API_ID, sender="FunnelSync", base_url=sandbox.url, retry=FAST_SMS_RETRY)
    yield sms
    await sms.aclose()


# --- phone numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+7 (925) 507-06-02", NUMBER),
        ("79255070602", NUMBER),
        ("8 925 507 06 02", NUMBER),  # the Russian trunk prefix
        ("8-925-507-06-02", NUMBER),
        ("+375 29 123-45-67", "375291234567"),
        ("+49 30 1234567", "49301234567"),  # shorter international numbers need the "+"
    ],
)
def test_phone_numbers_are_normalised_to_international_digits(raw: str, expected: str) -> None:
    assert normalise_phone(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "12345", "925 507-06-02", "+7 925 abc 06 02", "0079255070602", "+7925507060212345", "٧٩٢٥٥٠٧٠٦٠٢"],
)
def test_what_is_not_an_international_number_is_refused(raw: str) -> None:
    with pytest.raises(PermanentChannelError) as refused:
        normalise_phone(raw)
    assert refused.value.code == "INVALID_NUMBER"


# --- success ---------------------------------------------------------------------------------------


async def test_a_message_is_sent_once_and_its_sms_id_is_the_receipt(
    channel: SmsRuChannel, sandbox: RunningSmsSandbox
) -> None:
    receipt = await channel.send(message(recipient="+7 (925) 507-06-02", text="Ваш заказ готов"))

    [sent] = sandbox.messages()
    assert sent == {
        "sms_id": receipt.provider_id,
        "to": NUMBER,
        "msg": "Ваш заказ готов",
        "from": "FunnelSync",
    }
    assert receipt.provider_id
    assert sandbox.stats()["requests"] == 1


async def test_the_trunk_prefix_8_is_sent_as_7(channel: SmsRuChannel, sandbox: RunningSmsSandbox) -> None:
    await channel.send(message(recipient="8 (925) 507-06-02"))
    assert [sent["to"] for sent in sandbox.messages()] == [NUMBER]


async def test_without_a_sender_no_from_is_sent(sandbox: RunningSmsSandbox) -> None:
    sms = SmsRuChannel(API_ID, base_url=sandbox.url, retry=FAST_SMS_RETRY)
    try:
        await sms.send(message())
    finally:
        await sms.aclose()
    assert sandbox.messages()[0]["from"] is None


# --- refusals --------------------------------------------------------------------------------------


async def test_an_invalid_number_fails_before_any_request(
    channel: SmsRuChannel, sandbox: RunningSmsSandbox
) -> None:
    with pytest.raises(PermanentChannelError) as refused:
        await channel.send(message(recipient="12-34"))
    assert refused.value.code == "INVALID_NUMBER"
    assert sandbox.stats()["requests"] == 0


@pytest.mark.parametrize("code", [202, 207, 209, 215])
async def test_a_number_sms_ru_refuses_is_unreachable(
    channel: SmsRuChannel, sandbox: RunningSmsSandbox, code: int
) -> None:
    sandbox.control("POST", "/config", {"refuse": {NUMBER: code}})
    with pytest.raises(RecipientUnreachable) as refused:
        await channel.send(message())
    assert refused.value.code == str(code)
    assert sandbox.messages() == []
    assert sandbox.stats()["requests"] == 1  # a refusal is final: not resent


async def test_a_per_number_limit_is_temporary_with_its_window(
    channel: SmsRuChannel, sandbox: RunningSmsSandbox
) -> None:
    sandbox.control("POST", "/config", {"refuse": {NUMBER: 231}})  # identical messages per minute
    with pytest.raises(TemporaryChannelError) as refused:
        await channel.send(message())
    assert (refused.value.code, refused.value.retry_after) == ("231", 60.0)


async def test_a_wrong_api_id_is_permanent_and_not_about_the_recipient(sandbox: RunningSmsSandbox) -> None:
    sms = SmsRuChannel("wrong-api-id", base_url=sandbox.url, retry=FAST_SMS_RETRY)
    try:
        with pytest.raises(PermanentChannelError) as refused:
            await sms.send(message())
    finally:
        await sms.aclose()
    assert isinstance(refused.value, ChannelAccountRefused)  # the account, not this message
    assert refused.value.code == "200"
    assert "wrong-api-id" not in str(refused.value)


async def test_no_money_is_permanent(channel: SmsRuChannel, sandbox: RunningSmsSandbox) -> None:
    sandbox.control("POST", "/config", {"no_money": True})
    with pytest.raises(PermanentChannelError) as refused:
        await channel.send(message())
    assert isinstance(refused.value, ChannelAccountRefused)
    assert refused.value.code == "201"
    assert sandbox.messages() == []


# --- outages ---------------------------------------------------------------------------------------


async def test_service_unavailable_is_resent_within_the_send(
    channel: SmsRuChannel, sandbox: RunningSmsSandbox
) -> None:
    sandbox.fault(kind="code_220", count=1)
    receipt = await channel.send(message())
    assert sandbox.stats()["requests"] == 2
    assert [sent["sms_id"] for sent in sandbox.messages()] == [receipt.provider_id]


async def test_service_unavailable_throughout_is_temporary(
    channel: SmsRuChannel, sandbox: RunningSmsSandbox
) -> None:
    sandbox.fault(kind="code_220", count=10)
    with pytest.raises(TemporaryChannelError) as refused:
        await channel.send(message())
    assert refused.value.code == "220"
    assert sandbox.stats()["requests"] == FAST_SMS_RETRY.attempts


async def test_an_http_5xx_is_temporary_and_not_resent(
    channel: SmsRuChannel, sandbox: RunningSmsSandbox
) -> None:
    # SMS.ru may have taken the message before failing: resending could send it twice.
    sandbox.fault(kind="http_500", count=10)
    with pytest.raises(TemporaryChannelError) as refused:
        await channel.send(message())
    assert refused.value.code == "HTTP_500"
    assert sandbox.stats()["requests"] == 1


async def test_a_timeout_is_temporary_and_not_resent(sandbox: RunningSmsSandbox) -> None:
    sandbox.fault(kind="hang", count=1, seconds=60)  # released by the fixture's reset
    sms = SmsRuChannel(API_ID, base_url=sandbox.url, retry=FAST_SMS_RETRY, timeout=0.3)
    try:
        with pytest.raises(TemporaryChannelError) as refused:
            await sms.send(message())
    finally:
        await sms.aclose()
    assert refused.value.code == "TIMEOUT"
    assert sandbox.stats()["requests"] == 1


async def test_no_server_is_temporary_and_resent() -> None:
    sms = SmsRuChannel(API_ID, base_url=f"http://127.0.0.1:{free_port()}", retry=FAST_SMS_RETRY)
    try:
        with pytest.raises(TemporaryChannelError) as refused:
            await sms.send(message())
    finally:
        await sms.aclose()
    assert refused.value.code == "CONNECT"
    assert API_ID not in str(refused.value)


# --- the api_id stays secret -----------------------------------------------------------------------


async def test_the_api_id_is_never_in_a_url_nor_in_a_log_line(
    channel: SmsRuChannel, sandbox: RunningSmsSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await channel.send(message())
    sandbox.control("POST", "/config", {"refuse": {NUMBER: 207}})
    with pytest.raises(RecipientUnreachable):
        await channel.send(message(key="cmd-2"))

    assert sandbox.stats()["query_keys"] == [[], []]  # everything went in the POST body
    assert any(record.name.startswith("httpx") for record in caplog.records)  # URLs were logged...
    assert not [record for record in caplog.records if API_ID in record.getMessage()]  # ...but no api_id
    assert API_ID not in repr(channel)


async def test_provider_texts_that_echo_the_api_id_are_redacted(sandbox: RunningSmsSandbox) -> None:
    # A base URL with no SMS.ru behind it answers 404 {"detail": "Not Found"}: an api_id that happens
    # to be those words stands for a provider text echoing the credential back.
    sms = SmsRuChannel("Not Found", base_url=f"{sandbox.url}/elsewhere", retry=FAST_SMS_RETRY)
    try:
        with pytest.raises(PermanentChannelError) as refused:
            await sms.send(message())
    finally:
        await sms.aclose()
    assert refused.value.code == "HTTP_404"
    assert "Not Found" not in str(refused.value)
    assert "<api_id>" in str(refused.value)
