"""Sending policy as tables: quiet hours on a zone's wall clock (DST included), the daily limit and
the local day it counts, and the channel a message takes."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from app.automations.policy import (
    DailyLimit,
    QuietHours,
    allowed,
    choose_channel,
    day_bounds,
    local_day,
    next_send_time,
)
from funnel_templates.automations import Channel

MOSCOW = ZoneInfo("Europe/Moscow")  # UTC+3 all year
BERLIN = ZoneInfo("Europe/Berlin")  # CET/CEST: 2026 summer time from 29 March to 25 October
NIGHT_MSK = QuietHours(time(21), time(9), MOSCOW)
NIGHT_BERLIN = QuietHours(time(21), time(9), BERLIN)
LUNCH_MSK = QuietHours(time(13), time(14), MOSCOW)  # not wrapping midnight


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "quiet", "expected"),
    [
        pytest.param(utc(2026, 11, 23, 10), NIGHT_MSK, utc(2026, 11, 23, 10), id="msk-midday-goes-now"),
        pytest.param(utc(2026, 11, 23, 17, 59), NIGHT_MSK, utc(2026, 11, 23, 17, 59), id="msk-20-59-goes-now"),
        pytest.param(utc(2026, 11, 23, 18), NIGHT_MSK, utc(2026, 11, 24, 6), id="msk-21-00-waits-till-9-next-day"),
        pytest.param(utc(2026, 11, 23, 20, 30), NIGHT_MSK, utc(2026, 11, 24, 6), id="msk-23-30-waits"),
        pytest.param(utc(2026, 11, 23, 21, 30), NIGHT_MSK, utc(2026, 11, 24, 6), id="msk-after-midnight-same-morning"),
        pytest.param(utc(2026, 11, 24, 5, 59), NIGHT_MSK, utc(2026, 11, 24, 6), id="msk-08-59-waits-a-minute"),
        pytest.param(utc(2026, 11, 24, 6), NIGHT_MSK, utc(2026, 11, 24, 6), id="msk-09-00-goes-now"),
        pytest.param(utc(2026, 11, 23, 10, 30), LUNCH_MSK, utc(2026, 11, 23, 11), id="non-wrapping-period"),
        pytest.param(utc(2026, 11, 23, 11), LUNCH_MSK, utc(2026, 11, 23, 11), id="non-wrapping-end-is-open"),
        pytest.param(utc(2026, 11, 23, 2), None, utc(2026, 11, 23, 2), id="no-quiet-hours"),
        pytest.param(utc(2026, 11, 23, 2), QuietHours(time(9), time(9), MOSCOW), utc(2026, 11, 23, 2),
                     id="empty-period"),
        # Berlin: the night before summer time starts the morning is one hour "earlier" in UTC.
        pytest.param(utc(2026, 3, 28, 21), NIGHT_BERLIN, utc(2026, 3, 29, 7), id="berlin-spring-forward-night"),
        pytest.param(utc(2026, 3, 27, 21), NIGHT_BERLIN, utc(2026, 3, 28, 8), id="berlin-winter-night"),
        pytest.param(utc(2026, 10, 24, 20), NIGHT_BERLIN, utc(2026, 10, 25, 8), id="berlin-fall-back-night"),
        pytest.param(utc(2026, 7, 1, 6), NIGHT_BERLIN, utc(2026, 7, 1, 7), id="berlin-summer-morning"),
        pytest.param(datetime(2026, 11, 23, 19, 0), NIGHT_MSK, utc(2026, 11, 24, 6), id="naive-is-utc"),
    ],
)  # fmt: skip
def test_next_send_time(at: datetime, quiet: QuietHours | None, expected: datetime) -> None:
    assert next_send_time(at, quiet) == expected


def test_a_quiet_period_ending_in_the_dst_gap_ends_after_the_gap() -> None:
    """02:30 does not exist in Berlin on 29 March 2026 (02:00 -> 03:00): the next moment that does."""
    quiet = QuietHours(time(1), time(2, 30), BERLIN)
    sent = next_send_time(utc(2026, 3, 29, 0, 30), quiet)  # 01:30 CET
    assert sent == utc(2026, 3, 29, 1, 30)  # 03:30 CEST
    assert next_send_time(sent, quiet) == sent


@pytest.mark.parametrize(
    ("sent_today", "limit", "expected"),
    [(0, DailyLimit(2), True), (1, DailyLimit(2), True), (2, DailyLimit(2), False), (5, DailyLimit(2), False),
     (0, DailyLimit(0), False), (100, None, True)],
    ids=["none-sent", "one-left", "limit-reached", "over-limit", "zero-limit-sends-nothing", "no-limit"],
)  # fmt: skip
def test_allowed(sent_today: int, limit: DailyLimit | None, expected: bool) -> None:
    assert allowed(sent_today, limit) is expected


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        DailyLimit(-1)


@pytest.mark.parametrize(
    ("at", "tz", "start", "end"),
    [
        pytest.param(utc(2026, 11, 23, 22), MOSCOW, utc(2026, 11, 23, 21), utc(2026, 11, 24, 21),
                     id="moscow-late-utc-evening-is-tomorrow"),
        pytest.param(utc(2026, 11, 23, 20, 59), MOSCOW, utc(2026, 11, 22, 21), utc(2026, 11, 23, 21),
                     id="moscow-before-local-midnight"),
        pytest.param(utc(2026, 3, 29, 12), BERLIN, utc(2026, 3, 28, 23), utc(2026, 3, 29, 22),
                     id="berlin-23-hour-day"),
        pytest.param(utc(2026, 10, 25, 12), BERLIN, utc(2026, 10, 24, 22), utc(2026, 10, 25, 23),
                     id="berlin-25-hour-day"),
    ],
)  # fmt: skip
def test_day_bounds(at: datetime, tz: ZoneInfo, start: datetime, end: datetime) -> None:
    assert day_bounds(at, tz) == (start, end)
    assert start <= at < end
    assert local_day(start, tz) == local_day(at, tz) != local_day(end, tz)


ADDRESSES: dict[Channel, str | None] = {"telegram": "123456", "sms": "+79001234567", "email": "a@example.ru"}


@pytest.mark.parametrize(
    ("preferences", "reachable", "opted_out", "expected"),
    [
        (["telegram", "sms"], ADDRESSES, set(), ("telegram", "123456")),
        (["sms", "telegram"], ADDRESSES, set(), ("sms", "+79001234567")),
        (["telegram", "sms"], ADDRESSES, {"telegram"}, ("sms", "+79001234567")),
        (["telegram", "sms"], {"sms": "+79001234567"}, set(), ("sms", "+79001234567")),
        (["telegram", "sms"], {"telegram": None, "sms": " +79001234567 "}, set(), ("sms", "+79001234567")),
        (["telegram", "email"], {"telegram": "  ", "email": "a@example.ru"}, set(), ("email", "a@example.ru")),
        (["telegram", "sms"], ADDRESSES, {"telegram", "sms"}, None),
        (["email"], {"telegram": "123456"}, set(), None),
        ([], ADDRESSES, set(), None),
    ],
    ids=["first-preferred", "order-is-the-templates", "opted-out-skipped", "no-address-skipped",
         "none-address-skipped-address-trimmed", "blank-address-skipped", "all-opted-out", "unreachable",
         "no-preferences"],
)  # fmt: skip
def test_choose_channel(
    preferences: list[Channel],
    reachable: dict[Channel, str | None],
    opted_out: set[Channel],
    expected: tuple[Channel, str] | None,
) -> None:
    assert choose_channel(preferences, reachable, opted_out) == expected
