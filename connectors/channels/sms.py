"""SMS through SMS.ru's HTTP API (https://sms.ru/api/send).

One request per message: POST https://sms.ru/sms/send with api_id, to, msg, json=1 and, when the
account has an approved sender name, from. SMS.ru takes GET or POST alike; we POST a form so the
api_id never sits in a URL (httpx logs request URLs, proxies and SMS.ru's own access logs keep them).
Every text that leaves this module (exceptions, logs) is still passed through `_redact`, because the
provider's own texts or a transport error could echo the credential.

The answer is HTTP 200 with a JSON body whatever happened; refusals are status codes in it, either
for the whole request (bad api_id, no money) or per number:
    {"status": "OK", "status_code": 100,
     "sms": {"79255070602": {"status": "OK", "status_code": 100, "sms_id": "000000-10000000"}},
     "balance": 4122.56}
    {"status": "OK", ..., "sms": {"74993221627": {"status": "ERROR", "status_code": 207,
     "status_text": "..."}}}
    {"status": "ERROR", "status_code": 200, "status_text": "..."}
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay

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

log = logging.getLogger("funnelsync.channels.sms")

SMSRU_URL = "https://sms.ru"
SEND_PATH = "/sms/send"

# Retries inside one send() are only for failures where SMS.ru surely did not take the message (see
# RESENDABLE_CODES); everything else goes back to the outbox, which owns the longer retry schedule.
DEFAULT_RETRY = RetryPolicy(attempts=3, max_elapsed=20.0, base_delay=1.0, max_delay=5.0)


@dataclass(frozen=True)
class CodeMeaning:
    kind: type[ChannelError]
    text: str  # what the code means, for the operator, when SMS.ru sends no status_text
    retry_after: float | None = None


# SMS.ru's status codes. Sources: the request and answer shapes from https://sms.ru/api/send; the code
# table SMS.ru publishes with its API docs, read from two public SMS.ru client libraries that
# reproduce it word for word (the stored copy of the page we could search stops before the table).
# The kinds are our decision:
#   RecipientUnreachable: this number cannot get SMS from this account; stop trying it.
#   PermanentChannelError: sending it again fails the same way until a person changes the account
#     or the content.
#   TemporaryChannelError: a limit or an outage that passes by itself.
SMSRU_CODES: dict[int, CodeMeaning] = {
    # 200/300/301/302: credentials or account state; a person has to fix the connection.
    200: CodeMeaning(ChannelAccountRefused, "wrong api_id"),
    # 201: no money. Permanent per base.py's taxonomy (it fails the same way until someone tops up);
    # base.py has no account-level "pause the channel" error, which this code would rather be.
    201: CodeMeaning(ChannelAccountRefused, "not enough money on the account"),
    202: CodeMeaning(RecipientUnreachable, "wrong recipient number, or no route to it"),
    203: CodeMeaning(PermanentChannelError, "no message text"),
    204: CodeMeaning(ChannelAccountRefused, "sender name not approved by SMS.ru"),
    205: CodeMeaning(PermanentChannelError, "message too long (over 8 SMS)"),
    # 206: the account's daily limit; it resets the next day.
    206: CodeMeaning(TemporaryChannelError, "daily sending limit reached"),
    207: CodeMeaning(RecipientUnreachable, "no route for messages to this number"),
    208: CodeMeaning(PermanentChannelError, "wrong time parameter"),
    # 209: the account owner put the number on the account's stop list.
    209: CodeMeaning(RecipientUnreachable, "number is on the account's stop list"),
    210: CodeMeaning(PermanentChannelError, "GET used where POST is required"),
    211: CodeMeaning(PermanentChannelError, "method not found"),
    212: CodeMeaning(PermanentChannelError, "message text must be UTF-8"),
    213: CodeMeaning(PermanentChannelError, "too many recipients in one request"),
    # 214: a foreign number while the account sends to Russian numbers only: unreachable as set up.
    214: CodeMeaning(RecipientUnreachable, "number is abroad and the account sends to Russian numbers only"),
    # 215: the recipient complained of spam; SMS.ru itself blocks the number.
    215: CodeMeaning(RecipientUnreachable, "number is on SMS.ru's stop list (spam complaint)"),
    # 220: SMS.ru says "try a bit later"; the message was not taken, so it is safe to resend.
    220: CodeMeaning(TemporaryChannelError, "service temporarily unavailable"),
    # 230-233: per-number limits (per day, identical texts per minute/day, repeated codes).
    230: CodeMeaning(TemporaryChannelError, "daily limit of messages to this number reached"),
    231: CodeMeaning(TemporaryChannelError, "limit of identical messages to this number per minute", 60.0),
    232: CodeMeaning(TemporaryChannelError, "limit of identical messages to this number per day"),
    233: CodeMeaning(TemporaryChannelError, "limit of repeated code messages to this number"),
    300: CodeMeaning(ChannelAccountRefused, "wrong token"),
    301: CodeMeaning(ChannelAccountRefused, "wrong api_id, or login/password"),
    302: CodeMeaning(ChannelAccountRefused, "account not confirmed"),
    500: CodeMeaning(TemporaryChannelError, "SMS.ru server error, retry"),
}
# A code missing from the table: we cannot tell whether a resend would help, and resending an SMS
# costs money and may annoy the recipient, so it is not retried.
UNKNOWN_CODE = CodeMeaning(PermanentChannelError, "unknown SMS.ru status code")

# Failures after which SMS.ru surely has not taken the message: the connection never opened, or
# SMS.ru answered 220. A timeout or a broken answer is not here: the SMS may already be on its way.
RESENDABLE_CODES = frozenset({"CONNECT", "220"})


# --- phone numbers ---------------------------------------------------------------------------------

_PHONE_PUNCTUATION = re.compile(r"[\s().\-]")


def normalise_phone(raw: str) -> str:
    """A phone number as SMS.ru takes it: digits only, international format (+7 (925) 507-06-02 ->
    79255070602). A Russian 11-digit number with the trunk prefix 8 becomes 7XXXXXXXXXX. Without a
    "+", at least 11 digits are required: a bare 10-digit Russian number (925 507-06-02) would
    otherwise read as another country's. Raises PermanentChannelError for anything else."""
    stripped = _PHONE_PUNCTUATION.sub("", raw.strip())
    has_plus = stripped.startswith("+")
    digits = stripped[1:] if has_plus else stripped
    if not digits.isascii() or not digits.isdigit():
        raise PermanentChannelError(f"not a phone number: {raw!r}", code="INVALID_NUMBER")
    if not has_plus and len(digits) == 11 and digits.startswith("8"):
        digits = "7" + digits[1:]
    shortest = 8 if has_plus else 11  # E.164 numbers run from about 8 to 15 digits
    if digits.startswith("0") or not shortest <= len(digits) <= 15:
        raise PermanentChannelError(
            f"not a phone number in international format: {raw!r}", code="INVALID_NUMBER"
        )
    return digits


# --- the channel -----------------------------------------------------------------------------------


class SmsRuChannel:
    """Sends one SMS per message through SMS.ru. `send` returns SMS.ru's sms_id as the receipt."""

    name = "sms"

    def __init__(
        self,
        api_id: str,
        *,
        sender: str | None = None,
        base_url: str = SMSRU_URL,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: float = 30.0,
    ) -> None:
        self._api_id = api_id
        self.sender = sender
        self.retry = retry
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers={"User-Agent": "FunnelSync"},
            verify=tls_context(),
        )

    async def send(self, message: OutgoingMessage) -> Receipt:
        number = normalise_phone(message.recipient)  # before any request: a bad number never costs one
        form = {"api_id": self._api_id, "to": number, "msg": message.text, "json": "1"}
        if self.sender:
            form["from"] = self.sender
        try:
            answer = await self._post_with_retries(form)
            sms_id = sms_id_for(answer, number)
        except ChannelError as exc:
            # The outbox command's key, not the number: logs should not collect contacts' phones.
            log.warning("SMS %s failed: %s", message.key, exc.provider_text)
            raise
        return Receipt(provider_id=sms_id)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post_with_retries(self, form: dict[str, str]) -> Any:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_resendable),
            stop=stop_after_attempt(self.retry.attempts) | stop_after_delay(self.retry.max_elapsed),
            wait=_backoff(self.retry),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                answer = await self._post(form)
                raise_for_request_error(answer)
                return answer
        raise TemporaryChannelError("retry loop ended without an answer")  # pragma: no cover

    async def _post(self, form: dict[str, str]) -> Any:
        """One request; the decoded JSON answer. Transport failures and HTTP errors raised, redacted."""
        try:
            response = await self._client.post(SEND_PATH, data=form)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise TemporaryChannelError(
                self._redact(f"cannot connect to SMS.ru: {exc!r}"), code="CONNECT"
            ) from None
        except httpx.TimeoutException as exc:
            # The request went out: SMS.ru may have sent the SMS. The outbox decides whether to resend.
            raise TemporaryChannelError(self._redact(f"SMS.ru timed out: {exc!r}"), code="TIMEOUT") from None
        except httpx.TransportError as exc:
            raise TemporaryChannelError(
                self._redact(f"network error talking to SMS.ru: {exc!r}"), code="NETWORK"
            ) from None
        if response.status_code != 200:
            raise self._http_error(response)
        try:
            return response.json()
        except ValueError:
            raise TemporaryChannelError(
                self._redact(f"SMS.ru answered something other than JSON: {response.text[:200]!r}"),
                code="BAD_RESPONSE",
            ) from None

    def _http_error(self, response: httpx.Response) -> ChannelError:
        status = response.status_code
        text = self._redact(f"SMS.ru answered HTTP {status}: {response.text[:200]!r}")
        if status in (408, 429) or status >= 500:
            return TemporaryChannelError(
                text, code=f"HTTP_{status}", retry_after=retry_after_seconds(response)
            )
        return PermanentChannelError(text, code=f"HTTP_{status}")

    def _redact(self, text: str) -> str:
        return text.replace(self._api_id, "<api_id>") if self._api_id else text

    def __repr__(self) -> str:  # never the api_id
        return f"SmsRuChannel(base_url={str(self._client.base_url)!r}, sender={self.sender!r})"


# --- answers ---------------------------------------------------------------------------------------


def raise_for_request_error(answer: Any) -> None:
    """A refusal of the whole request (bad api_id, no money, service unavailable) raised."""
    if not isinstance(answer, dict):
        raise TemporaryChannelError(
            f"SMS.ru answered an unexpected JSON: {str(answer)[:200]!r}", code="BAD_RESPONSE"
        )
    if answer.get("status") != "OK":
        raise error_for_code(answer.get("status_code"), answer.get("status_text"))


def sms_id_for(answer: dict[str, Any], number: str) -> str:
    """SMS.ru's id for the message to `number`, or its per-number refusal raised."""
    entries = answer.get("sms")
    entry = entries.get(number) if isinstance(entries, dict) else None
    if not isinstance(entry, dict):
        raise TemporaryChannelError(f"SMS.ru's answer has no result for {number}", code="BAD_RESPONSE")
    if entry.get("status") != "OK" or "sms_id" not in entry:
        raise error_for_code(entry.get("status_code"), entry.get("status_text"))
    return str(entry["sms_id"])


def error_for_code(status_code: Any, status_text: Any) -> ChannelError:
    """The ChannelError for one of SMS.ru's status codes (SMSRU_CODES)."""
    try:
        code = int(status_code)
    except (TypeError, ValueError):
        code = -1
    meaning = SMSRU_CODES.get(code, UNKNOWN_CODE)
    text = f"SMS.ru {status_code}: {status_text or meaning.text}"
    if meaning.kind is TemporaryChannelError:
        return TemporaryChannelError(text, code=str(status_code), retry_after=meaning.retry_after)
    return meaning.kind(text, code=str(status_code))


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Retry-After in seconds (only the delta-seconds form: SMS.ru sends none, a proxy might)."""
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _resendable(exc: BaseException) -> bool:
    return isinstance(exc, TemporaryChannelError) and exc.code in RESENDABLE_CODES


def _backoff(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        backoff = min(policy.max_delay, policy.base_delay * 2 ** (state.attempt_number - 1))
        return random.uniform(backoff / 2, backoff)  # "equal jitter", as connectors/http.py does

    return wait
