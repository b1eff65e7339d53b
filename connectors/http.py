"""Shared HTTP plumbing for connectors: one httpx client per connection, a per-account rate limiter
and the retry policy.

The limiter is aiolimiter's leaky bucket, which is exactly Bitrix24's documented model (capacity X,
drains Y per second) and a plain 7-per-second window for amoCRM. Limiters are kept per account key in
this process so that every connector object for one account shares one bucket; across processes the
outbox lease (one worker per account) keeps the limit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from connectors.base import AccountBlocked, BatchTooLarge, CRMError, RateLimited, Retryable

T = TypeVar("T")
log = logging.getLogger("funnelsync.connectors")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one verifying TLS context every outgoing client shares.

    httpx builds a new context per client by default, which loads the whole CA bundle: about 40 ms
    of CPU and several hundred KB per client, paid again for every connection's client in a worker
    serving hundreds of accounts. A configured context is safe to share between clients and threads.
    """
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class RatePolicy:
    """A leaky bucket: `burst` requests at once, refilled at `per_second`."""

    per_second: float
    burst: int

    def scaled(self, speed: float) -> RatePolicy:
        """Scale the rate for sandboxes run faster than real time (tests); burst stays the same."""
        return RatePolicy(per_second=self.per_second * speed, burst=self.burst)


BITRIX24_STANDARD = RatePolicy(per_second=2, burst=50)
BITRIX24_ENTERPRISE = RatePolicy(per_second=5, burst=250)
AMOCRM_DEFAULT = RatePolicy(per_second=7, burst=7)


JITTER_ALLOWANCE = 0.25  # seconds of network/arrival jitter the bucket headroom absorbs


def with_headroom(rate: RatePolicy) -> RatePolicy:
    """The CRM counts requests when they arrive, we count them when they leave: requests sent
    evenly can arrive bunched (connection setup, scheduling). Leave room in the burst for
    JITTER_ALLOWANCE seconds of drain so bunching never overflows the CRM's bucket. At Bitrix24's
    real 2/s this costs one request of the 50, at amoCRM's 7/s two of the 7; the sustained rate is
    unchanged."""
    headroom = max(1, math.ceil(rate.per_second * JITTER_ALLOWANCE))
    return RatePolicy(per_second=rate.per_second, burst=max(1, rate.burst - headroom))


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    max_elapsed: float = 120.0  # seconds across all attempts
    base_delay: float = 0.5
    max_delay: float = 30.0
    # After a rate-limit refusal, wait at least this long before the next attempt: the window the
    # CRM counts requests in. amoCRM counts per second and shares its account-wide pool with every
    # other integration of the account, so a retry within the same second meets the same full
    # window. 0 = no floor (exponential backoff only). A Retry-After the CRM sends raises it further.
    rate_limit_wait: float = 0.0


# Random extra wait after a rate-limit floor, as a fraction of `rate_limit_wait`: workers refused
# in the same window spread over the next half window instead of all arriving at its start.
RATE_LIMIT_JITTER = 0.5


_limiters: dict[str, tuple[RatePolicy, AsyncLimiter]] = {}


def limiter_for(account_key: str, policy: RatePolicy) -> AsyncLimiter:
    """The process-wide limiter for one account (recreated if the policy changed)."""
    existing = _limiters.get(account_key)
    if existing and existing[0] == policy:
        return existing[1]
    # AsyncLimiter(max_rate, time_period) lets max_rate acquisitions through per time_period and
    # drains continuously: capacity `burst`, drained at `burst / time_period` = per_second.
    limiter = AsyncLimiter(policy.burst, policy.burst / policy.per_second)
    _limiters[account_key] = (policy, limiter)
    return limiter


RateWaitObserver = Callable[[str, float], None]
# Process-wide listeners for time spent waiting on a limiter (account key, seconds): the service
# exports it as a metric without every connector constructor having to carry a callback.
_rate_wait_observers: list[RateWaitObserver] = []


def observe_rate_waits(observer: RateWaitObserver) -> None:
    if observer not in _rate_wait_observers:
        _rate_wait_observers.append(observer)


# A renamed Bitrix24 portal answers its old address with a redirect to the new one (PYSDK
# errors/__init__.py BitrixResponse302JSONDecodeError.new_domain; docs/crm/bitrix24.md §5); amoCRM
# renames are handled the same way (UNVERIFIED, docs/crm/amocrm.md §1).
HOST_REDIRECTS = (301, 302, 307, 308)
MAX_HOST_REDIRECTS = 3
# (old origin, new origin), e.g. ("https://old.bitrix24.ru", "https://new.bitrix24.ru"): the app
# records the account's new address. Origins carry no path, so never a webhook's secret code.
DomainSaver = Callable[[str, str], Awaitable[None]]


# A Bitrix24 inbound webhook URL carries its credential in the path: /rest/<user id>/<code>/. Only
# the code is secret (the user id helps to tell webhooks apart), so only the code is replaced.
_WEBHOOK_CODE = re.compile(r"(/rest/\d+/)[A-Za-z0-9]+(?![A-Za-z0-9])")
REDACTED = "***"


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` (an error, a log line) with every Bitrix24 inbound-webhook code and each of the
    known `secrets` replaced by "***". Secrets shorter than 6 characters are not searched for:
    replacing every "1" in a text hides more than it protects."""
    redacted = _WEBHOOK_CODE.sub(rf"\1{REDACTED}", text)
    for secret in sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True):
        redacted = redacted.replace(secret, REDACTED)
    return redacted


def redact_error(error: CRMError, secrets: Iterable[str | None] = ()) -> CRMError:
    """The same error with its message and CRM text redacted (in place, so its type, cause and
    other attributes stay): what is stored, shown and logged of it names no credential."""
    known = list(secrets)
    error.message = redact(error.message, known)
    error.crm_text = redact(error.crm_text, known)
    error.args = tuple(redact(a, known) if isinstance(a, str) else a for a in error.args)
    return error


def origin(url: str | httpx.URL) -> str:
    """scheme://host[:port] of a URL, nothing else (no path, no credentials)."""
    parsed = httpx.URL(str(url))
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


def with_origin(url: str, old: str, new: str) -> str:
    """`url` moved from origin `old` to `new`; unchanged when it is not on `old`."""
    return new + url[len(old) :] if url.startswith(old) and url[len(old) : len(old) + 1] in ("", "/") else url


class RedirectRefused(AccountBlocked):
    """The CRM redirected a call somewhere other than the same path on another host. Not followed:
    every call of the account gets the same answer, so it is account-level (the connection pauses
    and queued writes wait instead of dying) until a person checks the account's address."""


def host_redirect_target(response: httpx.Response) -> httpx.URL:
    """The request's own URL on the host the redirect names, when the redirect changes the host
    only (same scheme, same path). Anything else raises RedirectRefused; its text names origins
    only, because a Bitrix24 inbound webhook's path is itself a credential."""
    sent = response.request.url
    location = response.headers.get("location")
    if not location:
        raise RedirectRefused(
            f"{origin(sent)} answered HTTP {response.status_code} without a Location header",
            crm_code=f"HTTP_{response.status_code}",
            status=response.status_code,
        )
    target = sent.join(location)
    changed = [
        what
        for what, same in (("scheme", target.scheme == sent.scheme), ("path", target.path == sent.path))
        if not same
    ]
    if changed or not target.host:
        raise RedirectRefused(
            f"{origin(sent)} answered HTTP {response.status_code} redirecting to {origin(target)} with a "
            f"different {' and '.join(changed) or 'host'}; not followed (a renamed account keeps the "
            "scheme and the path): check the account's address and update the connection",
            crm_code=f"HTTP_{response.status_code}",
            status=response.status_code,
        )
    # The request's own path and query, so nothing the Location adds or drops changes the call.
    return sent.copy_with(host=target.host, port=target.port)


class ThrottledClient:
    """httpx.AsyncClient with a per-account limiter. Every request goes through the limiter first,
    so the CRM's own limit is respected before it has to say no.

    A redirect to the same scheme and path on another host (a renamed portal/account) is followed:
    the request is sent again there, later requests go there directly and `on_host_change` is told
    once, before anything is sent to the new host: it may refuse the move by raising
    RedirectRefused (the service does for a host that is not a public address: the credentials
    would go there). Any other redirect raises RedirectRefused."""

    def __init__(
        self,
        base_url: str,
        account_key: str,
        rate: RatePolicy,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_host_change: DomainSaver | None = None,
    ) -> None:
        self.account_key = account_key
        self.on_host_change = on_host_change
        self._limiter = limiter_for(account_key, with_headroom(rate))
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            verify=tls_context(),
            headers={"User-Agent": "FunnelSync"},
        )
        self.requests_sent = 0

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await self._send(method, url, **kwargs)
        for _hop in range(MAX_HOST_REDIRECTS):
            if response.status_code not in HOST_REDIRECTS:
                return response
            target = host_redirect_target(response)
            await self._moved(origin(response.request.url), origin(target))
            # `target` already carries the query: do not append the params a second time.
            response = await self._send(
                method, str(target), **{k: v for k, v in kwargs.items() if k != "params"}
            )
        if response.status_code in HOST_REDIRECTS:
            raise RedirectRefused(
                f"more than {MAX_HOST_REDIRECTS} redirects from {origin(response.request.url)}",
                crm_code=f"HTTP_{response.status_code}",
                status=response.status_code,
            )
        return response

    async def _moved(self, old: str, new: str) -> None:
        await self._record_move(old, new)  # may refuse the move (RedirectRefused)
        if str(self._client.base_url).startswith(old):
            self._client.base_url = httpx.URL(with_origin(str(self._client.base_url), old, new))
        log.warning("%s moved from %s to %s: following it", self.account_key, old, new)

    async def _record_move(self, old: str, new: str) -> None:
        if self.on_host_change is None:
            return
        try:
            await self.on_host_change(old, new)
        except RedirectRefused:
            raise  # the owner refuses the new address: nothing is sent there
        except Exception:
            # The call itself can go on at the new address; the next process start meets the
            # redirect again and records the move then.
            log.exception("recording the move of %s to %s failed", self.account_key, new)

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        started = time.monotonic()
        await self._limiter.acquire()
        waited = time.monotonic() - started
        if waited > 0.001:
            for observer in _rate_wait_observers:
                observer(self.account_key, waited)
        self.requests_sent += 1
        try:
            return await self._client.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            # httpx's texts and the URL name a Bitrix24 inbound webhook's code: redacted here.
            raise Retryable(redact(f"timed out calling {url}: {exc!r}"), crm_code="TIMEOUT") from exc
        except httpx.TransportError as exc:
            raise Retryable(redact(f"network error calling {url}: {exc!r}"), crm_code="NETWORK") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def _is_retryable(idempotent: bool) -> Callable[[BaseException], bool]:
    def check(exc: BaseException) -> bool:
        if isinstance(exc, RateLimited):
            return True  # the CRM refused before doing anything: always safe to send again
        if isinstance(exc, BatchTooLarge):
            return False  # the caller must split the batch, not resend it
        if isinstance(exc, Retryable):
            # A create that timed out may have been applied: resending could duplicate it.
            return idempotent or exc.crm_code not in ("TIMEOUT",)
        return False

    return check


def _wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = min(policy.max_delay, policy.base_delay * 2 ** (state.attempt_number - 1))
        delay = random.uniform(backoff / 2, backoff)  # "equal jitter"
        if isinstance(exc, RateLimited):
            # Never sooner than the CRM's window or its Retry-After; the jitter goes on top of
            # that floor, never below it (a policy without a window keeps the plain Retry-After).
            floor = max(policy.rate_limit_wait, exc.retry_after or 0.0)
            jitter = random.uniform(0.0, policy.rate_limit_wait * RATE_LIMIT_JITTER)
            delay = max(delay, floor + jitter)
        return delay

    return wait


# Set by whoever runs CRM work and wants to know it turned slow: called each time a call is about to
# wait before trying again (a 5xx, a timeout, a rate limit). app.concurrency sets a connection's turn
# aside at that moment, so an account in an outage never keeps a slot the healthy ones need.
retry_wait_notice: ContextVar[Callable[[], None] | None] = ContextVar("retry_wait_notice", default=None)


def _notify_retry_wait(_: RetryCallState) -> None:
    notice = retry_wait_notice.get()
    if notice is not None:
        notice()


async def with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    idempotent: bool = True,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run `call` under the retry policy; re-raise the last CRMError when attempts run out."""
    retrying = AsyncRetrying(
        retry=retry_if_exception(_is_retryable(idempotent)),
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_elapsed),
        wait=_wait(policy),
        sleep=sleep,
        before_sleep=_notify_retry_wait,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise CRMError("retry loop ended without a result")  # pragma: no cover - tenacity reraises
