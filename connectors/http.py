"""Shared HTTP plumbing for connectors: one httpx client per connection, a per-account rate limiter
and the retry policy.

The limiter is aiolimiter's leaky bucket, which is exactly Bitrix24's documented model (capacity X,
drains Y per second) and a plain 7-per-second window for amoCRM. Limiters are kept per account key in
this process so that every connector object for one account shares one bucket; across processes the
outbox lease (one worker per account) keeps the limit.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
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

from connectors.base import BatchTooLarge, CRMError, RateLimited, Retryable

T = TypeVar("T")


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


class ThrottledClient:
    """httpx.AsyncClient with a per-account limiter. Every request goes through the limiter first,
    so the CRM's own limit is respected before it has to say no."""

    def __init__(
        self,
        base_url: str,
        account_key: str,
        rate: RatePolicy,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.account_key = account_key
        self._limiter = limiter_for(account_key, with_headroom(rate))
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            headers={"User-Agent": "FunnelSync"},
        )
        self.requests_sent = 0

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
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
            raise Retryable(f"timed out calling {url}: {exc!r}", crm_code="TIMEOUT") from exc
        except httpx.TransportError as exc:
            raise Retryable(f"network error calling {url}: {exc!r}", crm_code="NETWORK") from exc

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
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay

    return wait


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
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise CRMError("retry loop ended without a result")  # pragma: no cover - tenacity reraises
