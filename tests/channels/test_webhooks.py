"""SignedWebhookChannel against the webhook receiver sandbox over real HTTP. Signatures are checked
with the standardwebhooks library's own Webhook.verify, independent of our signing code path."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from connectors.channels.base import PermanentChannelError, TemporaryChannelError
from connectors.channels.webhooks import SignedWebhookChannel, new_secret, retry_after_seconds, verify
from tests.support.channels_http import RunningReceiver, message, running_webhook_receiver
from tests.support.server import free_port


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[RunningReceiver]:
    with running_webhook_receiver() as receiver:
        yield receiver


@pytest.fixture
def receiver(receiver_server: RunningReceiver) -> Iterator[RunningReceiver]:
    receiver_server.reset()
    yield receiver_server
    receiver_server.reset()  # also ends a delivery a test left hanging


@pytest.fixture
async def channel(receiver: RunningReceiver) -> AsyncIterator[SignedWebhookChannel]:
    webhook = SignedWebhookChannel(receiver.hook_url, receiver.secret)
    yield webhook
    await webhook.aclose()


def headers_of(delivery: dict[str, str]) -> dict[str, str]:
    return {
        "webhook-id": delivery["id"],
        "webhook-timestamp": delivery["timestamp"],
        "webhook-signature": delivery["signature"],
    }


# --- secrets ---------------------------------------------------------------------------------------


def test_new_secrets_are_whsec_base64_of_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and second.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32
    assert first != second


@pytest.mark.parametrize("secret", ["", "whsec_", "c2VjcmV0c2VjcmV0", "whsec_not*base64!"])
def test_a_malformed_secret_is_refused_without_being_echoed(secret: str) -> None:
    with pytest.raises(ValueError) as refused:
        SignedWebhookChannel("http://127.0.0.1:9/hook", secret)
    assert "c2VjcmV0" not in str(refused.value)
    assert "not*base64" not in str(refused.value)


# --- delivery and signature ------------------------------------------------------------------------


async def test_a_delivery_is_signed_as_standard_webhooks_verify_expects(
    channel: SignedWebhookChannel, receiver: RunningReceiver
) -> None:
    receipt = await channel.send(message(key="cmd-42", text="Deal won"))

    [delivery] = receiver.deliveries()
    assert receipt.provider_id == "cmd-42" == delivery["id"]
    payload = Webhook(receiver.secret).verify(delivery["body"], headers_of(delivery))
    assert payload["type"] == "funnelsync.automation"
    assert payload["data"] == {"text": "Deal won"}
    # The body's timestamp is the signed header's moment.
    sent_at = datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
    assert int(sent_at.timestamp()) == int(delivery["timestamp"])
    assert delivery["signature"].startswith("v1,")


async def test_a_tampered_body_fails_verification(
    channel: SignedWebhookChannel, receiver: RunningReceiver
) -> None:
    await channel.send(message(text="amount 100"))
    [delivery] = receiver.deliveries()
    tampered = delivery["body"].replace("100", "900")
    assert tampered != delivery["body"]

    with pytest.raises(WebhookVerificationError):
        Webhook(receiver.secret).verify(tampered, headers_of(delivery))
    with pytest.raises(WebhookVerificationError):
        verify(headers_of(delivery), tampered, receiver.secret)
    assert verify(headers_of(delivery), delivery["body"], receiver.secret)["data"] == {"text": "amount 100"}


async def test_the_receiver_refuses_a_delivery_signed_with_another_secret(receiver: RunningReceiver) -> None:
    other_secret = new_secret()
    webhook = SignedWebhookChannel(receiver.hook_url, other_secret)
    try:
        with pytest.raises(PermanentChannelError) as refused:
            await webhook.send(message())
    finally:
        await webhook.aclose()
    assert refused.value.code == "HTTP_401"
    assert receiver.stats()["refused_signature"] == 1
    assert receiver.deliveries() == []
    assert other_secret not in str(refused.value)
    assert other_secret.removeprefix("whsec_") not in str(refused.value)


def test_verify_turns_a_malformed_signature_header_into_a_verification_error() -> None:
    headers = {
        "webhook-id": "x",
        "webhook-timestamp": str(int(datetime.now(UTC).timestamp())),
        "webhook-signature": "garbage",
    }
    with pytest.raises(WebhookVerificationError):
        verify(headers, "{}", new_secret())


# --- the body --------------------------------------------------------------------------------------


async def test_a_json_object_text_is_the_data_and_metadata_names_the_type(
    channel: SignedWebhookChannel, receiver: RunningReceiver
) -> None:
    document = {"deal_id": "17", "stage": "won", "amount": 1200, "client": "Ольга"}
    await channel.send(message(text=json.dumps(document), type="deal.stage_changed"))
    payload = receiver.deliveries()[0]["payload"]
    assert (payload["type"], payload["data"]) == ("deal.stage_changed", document)


async def test_text_that_looks_like_json_but_is_not_fails_before_sending(
    channel: SignedWebhookChannel, receiver: RunningReceiver
) -> None:
    with pytest.raises(PermanentChannelError) as refused:
        await channel.send(message(text='{"deal_id": 17,'))
    assert refused.value.code == "BAD_PAYLOAD"
    assert receiver.stats()["attempts"] == 0


async def test_json_that_is_not_an_object_is_plain_text(
    channel: SignedWebhookChannel, receiver: RunningReceiver
) -> None:
    await channel.send(message(text="[1, 2]"))
    assert receiver.deliveries()[0]["payload"]["data"] == {"text": "[1, 2]"}


# --- the id across retries -------------------------------------------------------------------------


async def test_the_same_key_is_the_same_webhook_id_and_the_receiver_drops_the_repeat(
    channel: SignedWebhookChannel, receiver: RunningReceiver
) -> None:
    await channel.send(message(key="cmd-7"))
    await channel.send(message(key="cmd-7"))
    await channel.send(message(key="cmd-8"))

    deliveries = receiver.deliveries()
    assert [(d["id"], d["repeats"]) for d in deliveries] == [("cmd-7", 1), ("cmd-8", 0)]
    assert receiver.stats()["attempts"] == 3


async def test_a_retry_after_a_failure_is_delivered_once(
    channel: SignedWebhookChannel, receiver: RunningReceiver
) -> None:
    receiver.fault(status=503, count=1)
    with pytest.raises(TemporaryChannelError):
        await channel.send(message(key="cmd-9"))
    await channel.send(message(key="cmd-9"))
    assert [(d["id"], d["repeats"]) for d in receiver.deliveries()] == [("cmd-9", 0)]


# --- receiver answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_server_errors_and_throttling_are_temporary(
    channel: SignedWebhookChannel, receiver: RunningReceiver, status: int
) -> None:
    receiver.fault(status=status, count=1)
    with pytest.raises(TemporaryChannelError) as refused:
        await channel.send(message())
    assert refused.value.code == f"HTTP_{status}"
    assert refused.value.retry_after is None


async def test_retry_after_is_honoured(channel: SignedWebhookChannel, receiver: RunningReceiver) -> None:
    receiver.fault(status=429, count=1, retry_after="7")
    with pytest.raises(TemporaryChannelError) as refused:
        await channel.send(message())
    assert refused.value.retry_after == 7.0


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    response = httpx.Response(503, headers={"Retry-After": "Sun, 01 Mar 2026 12:02:00 GMT"})
    assert retry_after_seconds(response, now=now) == 120.0
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "soon"}), now=now) is None


@pytest.mark.parametrize("status", [400, 404, 410, 307])
async def test_other_refusals_are_permanent(
    channel: SignedWebhookChannel, receiver: RunningReceiver, status: int
) -> None:
    receiver.fault(status=status, count=1)
    with pytest.raises(PermanentChannelError) as refused:
        await channel.send(message())
    assert refused.value.code == f"HTTP_{status}"


async def test_a_timeout_is_temporary(receiver: RunningReceiver) -> None:
    receiver.fault(hang=60, count=1)  # released by the fixture's reset
    webhook = SignedWebhookChannel(receiver.hook_url, receiver.secret, timeout=0.3)
    try:
        with pytest.raises(TemporaryChannelError) as refused:
            await webhook.send(message())
    finally:
        await webhook.aclose()
    assert refused.value.code == "TIMEOUT"


async def test_no_server_is_temporary_and_the_url_path_is_not_in_the_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks/receiver-token-123"
    secret = new_secret()
    webhook = SignedWebhookChannel(url, secret)
    try:
        with pytest.raises(TemporaryChannelError) as refused:
            await webhook.send(message())
    finally:
        await webhook.aclose()
    assert refused.value.code == "NETWORK"
    assert "receiver-token-123" not in str(refused.value)
    assert secret.removeprefix("whsec_") not in str(refused.value)
