"""Outgoing webhooks signed per the Standard Webhooks spec (https://www.standardwebhooks.com/).

Each message is one POST of a JSON body to the channel's URL:
    {"type": <message.metadata["type"], default "funnelsync.automation">,
     "timestamp": <when this attempt was sent, ISO 8601 UTC>,
     "data": <see below>}
`data` comes from message.text:
  * text whose first non-blank character is "{" is a JSON object the automation rendered, and is
    sent as `data` unchanged; if it does not parse as a JSON object the send fails permanently (a
    broken template should be seen, not delivered as a string);
  * any other text is sent as {"text": <the text>}.
Headers: webhook-id = message.key (the outbox command's idempotency key, so every retry of one
command carries the same id and the receiver drops repeats), webhook-timestamp = unix seconds of
this attempt, webhook-signature = "v1,<base64 HMAC-SHA256>" made by standardwebhooks.Webhook.sign
over "<id>.<timestamp>.<body>". Secrets are "whsec_" + base64 of random bytes (`new_secret`).

Answers: 2xx delivered; 408, 429, 5xx, timeouts and connection errors are TemporaryChannelError
(Retry-After honoured); redirects (not followed: the receiver's address changed) and other 4xx are
PermanentChannelError. Error texts name the URL's origin only: a webhook URL's path or query often
carries the receiver's own token.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import logging
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook, WebhookVerificationError

from connectors.channels.base import (
    OutgoingMessage,
    PermanentChannelError,
    Receipt,
    TemporaryChannelError,
)
from connectors.http import origin, tls_context

log = logging.getLogger("funnelsync.channels.webhooks")

DEFAULT_EVENT_TYPE = "funnelsync.automation"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24 to 64 random bytes
TEMPORARY_STATUSES = frozenset({408, 429})

__all__ = [
    "SignedWebhookChannel",
    "WebhookVerificationError",
    "new_secret",
    "payload_for",
    "verify",
]


def new_secret() -> str:
    """A fresh signing secret in the spec's format: "whsec_" + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def signer(secret: str) -> Webhook:
    """standardwebhooks' signer for `secret`; ValueError (never naming the secret) if malformed."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    if encoded == secret or not encoded:
        raise ValueError(f"a webhook secret is {SECRET_PREFIX!r} followed by base64")
    try:
        # standardwebhooks skips characters that are not base64: check strictly (padding optional).
        base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"a webhook secret is {SECRET_PREFIX!r} followed by base64") from None
    return Webhook(secret)


def verify(headers: Mapping[str, str], body: bytes | str, secret: str) -> Any:
    """The delivery's JSON payload if its signature matches `secret` and its timestamp is within
    the spec's five minutes of now; WebhookVerificationError otherwise (also for malformed headers,
    which standardwebhooks itself lets through as ValueError)."""
    try:
        return signer(secret).verify(body, dict(headers))
    except WebhookVerificationError:
        raise
    except ValueError as exc:  # a signature without a comma, bad base64, a body that is not JSON
        raise WebhookVerificationError(f"malformed webhook: {exc}") from None


def payload_for(message: OutgoingMessage, sent_at: datetime) -> dict[str, Any]:
    """The JSON body for `message` (the module docstring says how `data` is made)."""
    return {
        "type": message.metadata.get("type", DEFAULT_EVENT_TYPE),
        "timestamp": sent_at.isoformat().replace("+00:00", "Z"),
        "data": _data_for(message.text),
    }


def _data_for(text: str) -> dict[str, Any]:
    if not text.lstrip().startswith("{"):
        return {"text": text}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PermanentChannelError(
            f"the webhook's text is not valid JSON: {exc}", code="BAD_PAYLOAD"
        ) from None
    if not isinstance(data, dict):  # pragma: no cover - text starting with "{" parses to a dict or fails
        raise PermanentChannelError("the webhook's text is not a JSON object", code="BAD_PAYLOAD")
    return data


class SignedWebhookChannel:
    """POSTs each message to one URL, signed with one secret. `send` returns the webhook-id."""

    name = "webhook"

    def __init__(self, url: str, secret: str, *, timeout: float = 10) -> None:
        self.url = url
        self._signer = signer(secret)
        self._origin = origin(url)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            headers={"User-Agent": "FunnelSync-Webhooks"},
            verify=tls_context(),
        )

    async def send(self, message: OutgoingMessage) -> Receipt:
        sent_at = datetime.now(UTC).replace(microsecond=0)
        body = json.dumps(payload_for(message, sent_at), ensure_ascii=False, separators=(",", ":"))
        headers = {
            "content-type": "application/json",
            "webhook-id": message.key,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._signer.sign(message.key, sent_at, body),
        }
        response = await self._post(body.encode("utf-8"), headers)
        if not response.is_success:
            error = self._error_for(response)
            log.warning("webhook %s to %s failed: %s", message.key, self._origin, error.provider_text)
            raise error
        return Receipt(provider_id=message.key)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        try:
            return await self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TemporaryChannelError(
                f"{self._origin} did not answer in time ({type(exc).__name__})", code="TIMEOUT"
            ) from None
        except httpx.TransportError as exc:
            raise TemporaryChannelError(
                f"cannot reach {self._origin} ({type(exc).__name__})", code="NETWORK"
            ) from None

    def _error_for(self, response: httpx.Response) -> PermanentChannelError | TemporaryChannelError:
        status = response.status_code
        text = f"{self._origin} answered HTTP {status}: {response.text[:200]!r}"
        code = f"HTTP_{status}"
        if status in TEMPORARY_STATUSES or status >= 500:
            return TemporaryChannelError(text, code=code, retry_after=retry_after_seconds(response))
        if response.is_redirect:
            text = (
                f"{self._origin} answered HTTP {status} (a redirect, not followed): update the webhook's URL"
            )
        return PermanentChannelError(text, code=code)


def retry_after_seconds(response: httpx.Response, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
