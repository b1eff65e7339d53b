"""Telegram Bot API: sendMessage for automations, getUpdates/setWebhook for a bot that talks back.

Every answer is `{"ok": true, "result": ...}` or `{"ok": false, "error_code", "description",
"parameters": {"retry_after", "migrate_to_chat_id"}}` (core.telegram.org/bots/api, "Making
requests"). Mapping onto the channel taxonomy: 429 is flood control (wait `retry_after`), 5xx and
network failures are transient, 403 ("bot was blocked by the user", "user is deactivated") and 400
"chat not found" mean this chat cannot be reached, anything else (401 bad token, 400 bad request) is
permanent.

The token is part of every URL (`/bot<token>/METHOD`), so it would show in httpx's request log and in
any error that quotes the URL. The client therefore only ever sees `/bot<redacted>/...`; a transport
wrapper puts the real token in just before the bytes leave (`_TokenTransport`), and error texts pass
through `redact` as well.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from connectors.channels.base import (
    ChannelAccountRefused,
    ChannelError,
    OutgoingMessage,
    PermanentChannelError,
    Receipt,
    RecipientUnreachable,
    TemporaryChannelError,
)
from connectors.http import RetryPolicy, tls_context

log = logging.getLogger("funnelsync.channels.telegram")

API_URL = "https://api.telegram.org"
TOKEN_PLACEHOLDER = "REDACTED"
# Within one send: flood waits up to max_delay are sat out here; a longer one goes back to the
# outbox as TemporaryChannelError(retry_after) so a worker is not held for minutes.
DEFAULT_RETRY = RetryPolicy(attempts=3, max_elapsed=30.0, base_delay=0.5, max_delay=5.0)
# Failures after which the request certainly never reached Telegram: safe to send again even for
# sendMessage, which has no idempotency key (a resend after a read timeout could duplicate it).
NOTHING_SENT = frozenset({"429", "CONNECT"})
UNREACHABLE_400 = ("chat not found", "user not found", "peer_id_invalid")

Sleep = Callable[[float], Awaitable[None]]


class _TokenTransport(httpx.AsyncBaseTransport):
    """Swaps the placeholder in `/bot<placeholder>/` for the real token on the way out, so httpx's
    own request objects, logs and exceptions never hold it."""

    def __init__(self, inner: httpx.AsyncBaseTransport, token: str) -> None:
        self._inner = inner
        self._needle = f"/bot{TOKEN_PLACEHOLDER}/".encode()
        self._real = f"/bot{token}/".encode()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url.copy_with(raw_path=request.url.raw_path.replace(self._needle, self._real, 1))
        outgoing = httpx.Request(
            request.method, url, headers=request.headers, stream=request.stream, extensions=request.extensions
        )
        return await self._inner.handle_async_request(outgoing)

    async def aclose(self) -> None:
        await self._inner.aclose()


class TelegramChannel:
    name = "telegram"

    def __init__(
        self,
        token: str,
        *,
        base_url: str = API_URL,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._token = token
        self.retry = retry
        self.timeout = timeout
        self._sleep = sleep
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=_TokenTransport(transport or httpx.AsyncHTTPTransport(verify=tls_context()), token),
            headers={"User-Agent": "FunnelSync"},
        )

    def __repr__(self) -> str:
        return f"TelegramChannel(base_url={str(self._client.base_url)!r})"

    def redact(self, text: str) -> str:
        return text.replace(self._token, TOKEN_PLACEHOLDER) if self._token else text

    async def send(self, message: OutgoingMessage) -> Receipt:
        """sendMessage to the chat id in `message.recipient` (a number, or @channelusername)."""
        payload = {"chat_id": chat_id_value(message.recipient), "text": message.text}
        result = await self._call("sendMessage", payload, idempotent=False)
        return Receipt(provider_id=str(result["message_id"]))

    async def get_me(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("getMe", {}, idempotent=True)
        return result

    async def get_updates(
        self,
        offset: int | None = None,
        timeout: int = 0,  # noqa: ASYNC109 (the Bot API's long-poll seconds, not a cancel scope)
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Long polling: waits up to `timeout` seconds for updates with update_id >= offset; passing
        the last update_id + 1 confirms everything before it (the server drops it)."""
        payload: dict[str, Any] = {"timeout": timeout, "limit": limit}
        if offset is not None:
            payload["offset"] = offset
        result: list[dict[str, Any]] = await self._call(
            "getUpdates", payload, idempotent=True, read_timeout=timeout + self.timeout
        )
        return result

    async def set_webhook(
        self, url: str, secret_token: str | None = None, *, drop_pending_updates: bool = False
    ) -> None:
        """Telegram then POSTs each Update to `url` with the header X-Telegram-Bot-Api-Secret-Token."""
        payload: dict[str, Any] = {"url": url, "drop_pending_updates": drop_pending_updates}
        if secret_token is not None:
            payload["secret_token"] = secret_token
        await self._call("setWebhook", payload, idempotent=True)

    async def delete_webhook(self, *, drop_pending_updates: bool = False) -> None:
        await self._call("deleteWebhook", {"drop_pending_updates": drop_pending_updates}, idempotent=True)

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- one call, with retries -------------------------------------------------------------------

    async def _call(
        self, method: str, payload: dict[str, Any], *, idempotent: bool, read_timeout: float | None = None
    ) -> Any:
        started = time.monotonic()
        attempt = 1
        while True:
            try:
                return await self._call_once(method, payload, read_timeout)
            except TemporaryChannelError as exc:
                delay = self._retry_delay(exc, attempt, time.monotonic() - started, idempotent)
                if delay is None:
                    raise
                log.info("telegram %s: %s; trying again in %.1f s", method, exc.provider_text, delay)
                await self._sleep(delay)
                attempt += 1

    def _retry_delay(
        self, exc: TemporaryChannelError, attempt: int, elapsed: float, idempotent: bool
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give the error to the caller."""
        if attempt >= self.retry.attempts or not (idempotent or exc.code in NOTHING_SENT):
            return None
        backoff = min(self.retry.max_delay, self.retry.base_delay * 2 ** (attempt - 1))
        delay = random.uniform(backoff / 2, backoff)
        if exc.retry_after is not None:
            if exc.retry_after > self.retry.max_delay:
                return None  # a long flood wait: the outbox reschedules instead of holding a worker
            delay = max(delay, exc.retry_after)
        return None if elapsed + delay > self.retry.max_elapsed else delay

    async def _call_once(self, method: str, payload: dict[str, Any], read_timeout: float | None) -> Any:
        url = f"/bot{TOKEN_PLACEHOLDER}/{method}"
        timeout = httpx.Timeout(self.timeout, connect=10.0, read=read_timeout) if read_timeout else None
        try:
            if timeout is None:
                response = await self._client.post(url, json=payload)
            else:
                response = await self._client.post(url, json=payload, timeout=timeout)
        except httpx.TransportError as exc:
            # `from None`: the httpx exception is left out of the chain; its text, redacted, is kept.
            raise self._transport_error(method, exc) from None
        return self._result(method, response)

    def _transport_error(self, method: str, exc: httpx.TransportError) -> TemporaryChannelError:
        detail = self.redact(str(exc) or type(exc).__name__)
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return TemporaryChannelError(f"telegram {method}: could not connect: {detail}", code="CONNECT")
        if isinstance(exc, httpx.TimeoutException):
            return TemporaryChannelError(f"telegram {method} timed out: {detail}", code="TIMEOUT")
        return TemporaryChannelError(f"telegram {method}: network error: {detail}", code="NETWORK")

    def _result(self, method: str, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "ok" not in body:
            # Not the Bot API speaking (a proxy's HTML error page, say): judge by the status alone.
            text = f"telegram {method}: HTTP {response.status_code} without a Bot API answer"
            if response.status_code >= 500 or response.status_code == 429:
                raise TemporaryChannelError(text, code=f"HTTP_{response.status_code}")
            raise PermanentChannelError(text, code=f"HTTP_{response.status_code}")
        if body["ok"]:
            return body.get("result")
        raise self._api_error(method, response.status_code, body)

    def _api_error(self, method: str, status: int, body: dict[str, Any]) -> ChannelError:
        error_code = int(body.get("error_code") or status)
        description = self.redact(str(body.get("description") or ""))
        parameters = body.get("parameters") or {}
        text = f"telegram {method}: {error_code} {description}".strip()
        code = str(error_code)
        if error_code == 429:
            retry_after = parameters.get("retry_after")
            wait = float(retry_after) if isinstance(retry_after, int | float) else None
            return TemporaryChannelError(text, code=code, retry_after=wait)
        if error_code >= 500:
            return TemporaryChannelError(text, code=code)
        if error_code == 403 or (
            error_code == 400 and any(marker in description.lower() for marker in UNREACHABLE_400)
        ):
            return RecipientUnreachable(text, code=code)
        if error_code == 401:  # the bot's token was revoked or is wrong: no message can go out
            return ChannelAccountRefused(text, code=code)
        if "migrate_to_chat_id" in parameters:
            # A group became a supergroup: the chat id to store is in the answer.
            text += f" (the chat is now {parameters['migrate_to_chat_id']})"
        return PermanentChannelError(text, code=code)


def chat_id_value(recipient: str) -> int | str:
    """A numeric chat id goes as a number, an @channelusername as it is."""
    stripped = recipient.strip()
    try:
        return int(stripped)
    except ValueError:
        return stripped
