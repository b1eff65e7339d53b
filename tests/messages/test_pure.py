"""The pure parts: the opt-out token, the policy's quiet hours, address spelling, the enqueue
checks."""

from __future__ import annotations

from datetime import time

import pytest

from app.messages.addresses import normalise
from app.messages.compose import readable_when
from app.messages.optout import BadOptOutToken, make_token, read_token
from app.messages.policy import MessagingPolicy, parse_quiet_hours
from app.rules.engine import parse_when
from tests.support.crm import settings_for


def test_an_opt_out_token_names_its_target_and_refuses_tampering(tmp_path: object) -> None:
    settings = settings_for(tmp_path, "sqlite+aiosqlite:///unused")
    token = make_token(settings, 7, "email", "Ivan <IVAN@Example.ru>")
    target = read_token(settings, token)
    assert (target.connection_id, target.channel, target.address) == (7, "email", "ivan@example.ru")
    body, signature = token.split(".")
    forged = make_token(settings, 8, "email", "ivan@example.ru").split(".")[0]
    for bad in (f"{forged}.{signature}", body, f"{body}.AAAA", "", "..."):
        with pytest.raises(BadOptOutToken):
            read_token(settings, bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("21:00-09:00", (time(21), time(9))), ("", None), (" 8:30-20:00 ", (time(8, 30), time(20)))],
)
def test_quiet_hours_parse(text: str, expected: tuple[time, time] | None) -> None:
    assert parse_quiet_hours(text) == expected


@pytest.mark.parametrize("text", ["21-09", "25:00-09:00", "21:00", "late"])
def test_bad_quiet_hours_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM-HH:MM"):
        MessagingPolicy(quiet_hours=text)


def test_addresses_have_one_spelling() -> None:
    assert normalise("sms", "+7 (925) 507-06-02") == normalise("sms", "89255070602") == "79255070602"
    assert normalise("email", "Иван <Ivan@Example.RU>") == "ivan@example.ru"
    assert normalise("telegram", "@Vera_TG") == "@vera_tg" and normalise("telegram", " 700100 ") == "700100"


@pytest.mark.parametrize(
    ("raw", "language", "with_time", "expected"),
    [
        ("1796367600", "ru", True, "04.12.2026 10:00"),  # amoCRM: unix seconds, shown in Moscow time
        ("2026-12-04T07:00:00+00:00", "en", True, "2026-12-04 10:00"),  # Bitrix24: ISO 8601
        ("2026-12-04", "ru", False, "04.12.2026"),
        ("2026-12-04", "en", False, "2026-12-04"),
        (None, "ru", True, None),
    ],
)
def test_a_date_placeholder_reads_as_a_date_on_the_connections_clock(
    raw: str | None, language: str, with_time: bool, expected: str | None
) -> None:
    policy = MessagingPolicy.model_validate({"timezone": "Europe/Moscow", "language": language})
    assert readable_when(parse_when(raw), policy, with_time=with_time) == expected
