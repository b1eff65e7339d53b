"""Pure sending policy: when a message to a client may go out, whether today's limit allows it, and
which channel it takes. No clock reads: every time is a parameter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from funnel_templates.automations import Channel


def _aware(at: datetime) -> datetime:
    """Naive times are UTC, as everywhere in the engines."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _wall_clock(day: date, at: time, tz: ZoneInfo) -> datetime:
    """`day` at `at` on the zone's wall clock. A time that does not exist that day (skipped by a
    DST change) comes out as the instant just after the gap, not as an invalid local time."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC).astimezone(tz)


@dataclass(frozen=True)
class QuietHours:
    """No messages from `start` until `end`, on the wall clock of `tz`. The period may wrap
    midnight (21:00-09:00); start == end means no quiet hours."""

    start: time
    end: time
    tz: ZoneInfo

    def contains(self, local: time) -> bool:
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


def next_send_time(at: datetime, quiet: QuietHours | None) -> datetime:
    """`at` when it is outside the quiet hours, else the moment they end (in `quiet.tz`)."""
    at = _aware(at)
    if quiet is None:
        return at
    local = at.astimezone(quiet.tz)
    if not quiet.contains(local.time()):
        return at
    # In a wrapping period, the evening part ends the next morning.
    wraps_to_tomorrow = quiet.start > quiet.end and local.time() >= quiet.start
    end_day = local.date() + timedelta(days=1) if wraps_to_tomorrow else local.date()
    return _wall_clock(end_day, quiet.end, quiet.tz)


@dataclass(frozen=True)
class DailyLimit:
    """At most `per_contact` messages to one contact per day (the connection's local day)."""

    per_contact: int

    def __post_init__(self) -> None:
        if self.per_contact < 0:
            raise ValueError(f"a daily limit cannot be negative: {self.per_contact}")


def allowed(sent_today: int, limit: DailyLimit | None) -> bool:
    """Whether one more message fits after `sent_today` today; no limit allows everything."""
    return limit is None or sent_today < limit.per_contact


def local_day(at: datetime, tz: ZoneInfo) -> date:
    return _aware(at).astimezone(tz).date()


def day_bounds(at: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of the local day containing `at`, as UTC instants: what "sent today" counts.
    A DST-change day is 23 or 25 hours long."""
    day = local_day(at, tz)
    start = _wall_clock(day, time(0), tz)
    end = _wall_clock(day + timedelta(days=1), time(0), tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def choose_channel(
    preferences: Sequence[Channel],
    reachable: Mapping[Channel, str | None],
    opted_out: set[Channel],
) -> tuple[Channel, str] | None:
    """The first preferred channel the contact has an address for and has not opted out of, with
    that address; None when none is left (the message is not sent)."""
    for channel in preferences:
        address = (reachable.get(channel) or "").strip()
        if address and channel not in opted_out:
            return channel, address
    return None
