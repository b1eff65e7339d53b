"""The messaging policy of one connection, kept in Connection.settings["messaging"]: the time zone,
the quiet hours, the daily limit per contact, the language of the messages, and (amoCRM) which
contact field holds a client's Telegram. Read into the pure policy of app.automations.policy."""

from __future__ import annotations

import re
from datetime import time
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.automations.policy import DailyLimit, QuietHours
from app.connections.models import Connection

SETTINGS_KEY = "messaging"
QUIET_HOURS_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


def _clock(hours: str, minutes: str) -> time:
    return time(int(hours), int(minutes))


def parse_quiet_hours(value: str) -> tuple[time, time] | None:
    """ "21:00-09:00" -> (21:00, 09:00); "" -> None (no quiet hours); ValueError otherwise."""
    value = value.strip()
    if not value:
        return None
    match = QUIET_HOURS_RE.match(value)
    try:
        if match is None:
            raise ValueError
        start, end = _clock(*match.group(1, 2)), _clock(*match.group(3, 4))
    except ValueError:
        raise ValueError(
            f"quiet hours {value!r} must be HH:MM-HH:MM, such as 21:00-09:00, or empty"
        ) from None
    return start, end


class MessagingPolicy(BaseModel):
    """What the dashboard, API and CLI show and set. Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")

    timezone: str = "Europe/Moscow"  # IANA name: quiet hours and "today" are on this wall clock
    quiet_hours: str = "21:00-09:00"  # "" for none
    daily_limit: int = Field(default=3, ge=0)  # messages per contact per local day
    language: Literal["ru", "en"] = "ru"
    telegram_field: str | None = None  # amoCRM: the contact field (id or code) holding Telegram
    company_name: str | None = None  # {company.name} in message texts

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Moscow") from None
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours_shape(cls, value: str) -> str:
        parse_quiet_hours(value)
        return value.strip()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def quiet(self) -> QuietHours | None:
        bounds = parse_quiet_hours(self.quiet_hours)
        return QuietHours(bounds[0], bounds[1], self.zone) if bounds else None

    @property
    def limit(self) -> DailyLimit:
        return DailyLimit(self.daily_limit)


def policy_of(record: Connection) -> MessagingPolicy:
    """The connection's policy; a hand-edited setting that no longer validates falls back to the
    defaults for the keys it breaks, rather than stopping every message."""
    stored = dict((record.settings or {}).get(SETTINGS_KEY) or {})
    try:
        return MessagingPolicy.model_validate(stored)
    except ValueError:
        defaults = MessagingPolicy()
        good = {}
        for key, value in stored.items():
            try:
                MessagingPolicy.model_validate({key: value})
            except ValueError:
                continue
            good[key] = value
        return defaults.model_copy(update=good)


def set_policy(record: Connection, changes: dict[str, Any]) -> MessagingPolicy:
    """Apply `changes` (keys of MessagingPolicy) over the stored policy; ValidationError changes
    nothing."""
    merged = MessagingPolicy.model_validate({**policy_of(record).model_dump(), **changes})
    record.settings = {**(record.settings or {}), SETTINGS_KEY: merged.model_dump()}
    return merged
