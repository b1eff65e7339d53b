"""Issue #11 item 10c: after a 429 the retry waits at least amoCRM's one-second window (its pool is
shared with every integration of the account), with jitter on top, never under it. Measured on the
arrival times the sandbox records, not on the test's own clock."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from connectors.amocrm.transport import RATE_WINDOW, rate_window
from connectors.base import RateLimited
from connectors.http import AMOCRM_DEFAULT, RATE_LIMIT_JITTER, RatePolicy, RetryPolicy, with_retries
from tests.connectors.amocrm.conftest import SPEED, ConnectorFactory, running_sandbox

# What a connector would retry with by its own policy: a first retry after at most 20 ms.
QUICK = RetryPolicy(attempts=5, max_elapsed=30, base_delay=0.02, max_delay=0.2)


def _api_calls(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in log if e["route"] == "GET /api/v4/account"]


async def test_the_retry_after_a_429_is_sent_a_full_second_later(make_connector: ConnectorFactory) -> None:
    with running_sandbox(speed=1.0) as box:  # real time, the production rate policy
        connector = make_connector(box, rate=AMOCRM_DEFAULT, retry=QUICK)
        box.fault("rate_limit", 1)

        await connector.check()

        refused, retried = _api_calls(box.requests())
        assert (refused["status"], retried["status"]) == (429, 200)
        assert retried["seq"] == refused["seq"] + 1  # nothing else was sent in between
        assert retried["arrived"] - refused["arrived"] >= RATE_WINDOW


async def test_each_retry_of_a_429_storm_leaves_the_window_behind(make_connector: ConnectorFactory) -> None:
    """At sandbox speed the window shrinks with the rate: the tests stay fast, the rule holds."""
    with running_sandbox(speed=SPEED) as box:
        connector = make_connector(box, retry=QUICK)
        window = rate_window(AMOCRM_DEFAULT.scaled(SPEED))
        box.fault("rate_limit", 3)

        await connector.check()

        calls = _api_calls(box.requests())
        assert [c["status"] for c in calls] == [429, 429, 429, 200]
        for before, after in pairwise(calls):
            assert after["arrived"] - before["arrived"] >= window


def test_the_window_is_a_real_second_for_every_production_rate() -> None:
    # The connection factory builds N per second with the burst rounded down.
    for per_second in (7.0, 7.5, 15.0, 50.0):
        rate = RatePolicy(per_second=per_second, burst=max(1, int(per_second)))
        assert rate_window(rate) >= RATE_WINDOW


async def _waits_after(exc: RateLimited, policy: RetryPolicy, tries: int = 200) -> list[float]:
    """The waits with_retries asks for after `exc` (a recording sleep: no time passes)."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    for _ in range(tries):
        outcomes: list[Exception | None] = [exc, None]  # refused once, then answered

        async def call(outcomes: list[Exception | None] = outcomes) -> str:
            failure = outcomes.pop(0)
            if failure is not None:
                raise failure
            return "ok"

        assert await with_retries(call, policy, sleep=record) == "ok"
    return waits


async def test_the_wait_is_jittered_above_the_window_never_under_it() -> None:
    policy = RetryPolicy(base_delay=0.02, max_delay=0.2, rate_limit_wait=1.0)
    waits = await _waits_after(RateLimited("429"), policy)
    assert min(waits) >= 1.0 and max(waits) <= 1.0 + RATE_LIMIT_JITTER
    assert len(set(waits)) > 1  # jittered, so refused workers do not all come back at once


async def test_the_floor_is_the_longer_of_the_window_and_retry_after() -> None:
    policy = RetryPolicy(base_delay=0.02, max_delay=0.2, rate_limit_wait=1.0)
    short = await _waits_after(RateLimited("429", retry_after=0.3), policy)
    assert min(short) >= 1.0 and max(short) <= 1.0 + RATE_LIMIT_JITTER
    long = await _waits_after(RateLimited("429", retry_after=3.0), policy)
    assert min(long) >= 3.0 and max(long) <= 3.0 + RATE_LIMIT_JITTER
    # A policy without a window (Bitrix24's) keeps the exact Retry-After floor it always had.
    plain = RetryPolicy(base_delay=0.02, max_delay=0.2)
    assert set(await _waits_after(RateLimited("limit", retry_after=2.0), plain, tries=20)) == {2.0}
