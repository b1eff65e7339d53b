"""Parsing Bitrix24 outbound events (bodies shaped like the real capture in docs/crm/bitrix24.md §4)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest

from connectors import base
from connectors.bitrix24.events import WebhookParseError, parse_webhook, read_auth, verify_application_token

FORM = "application/x-www-form-urlencoded"
# Real outgoing-webhook capture (docs/crm/bitrix24.md §4), encoded as PHP's http_build_query sends it.
CAPTURE = (
    b"event=ONCRMDEALUPDATE&data%5BFIELDS%5D%5BID%5D=39&ts=1707749333"
    b"&auth%5Bdomain%5D=b24-3tmral.bitrix24.ru&auth%5Bclient_endpoint%5D=https%3A%2F%2Fb24-3tmral.bitrix24.ru%2Frest%2F"
    b"&auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F"
    b"&auth%5Bmember_id%5D=51e2c566fe259c926c60bc06c7158cda&auth%5Bapplication_token%5D=e57xiy964jb6slr0gfa0j6lpigf7gnij"
)


def test_real_capture_parses() -> None:
    hook = parse_webhook(CAPTURE, FORM)
    [event] = hook.events
    assert (event.kind, event.deal_id) == ("update", "39")
    assert event.occurred_at == datetime.fromtimestamp(1707749333, UTC)
    assert event.dedupe_key == "bitrix24:ONCRMDEALUPDATE:39:1707749333"
    assert (hook.domain, hook.member_id) == ("b24-3tmral.bitrix24.ru", "51e2c566fe259c926c60bc06c7158cda")
    assert hook.application_token == "e57xiy964jb6slr0gfa0j6lpigf7gnij"
    assert hook.client_endpoint == "https://b24-3tmral.bitrix24.ru/rest/" and hook.event_handler_id is None


def test_unencoded_brackets_and_charset_in_content_type() -> None:
    body = (
        b"event=ONCRMDEALADD&data[FIELDS][ID]=7&ts=1766047124&auth[application_token]=tok&auth[member_id]=m"
    )
    hook = parse_webhook(body, "application/x-www-form-urlencoded; charset=utf-8")
    assert [(e.kind, e.deal_id) for e in hook.events] == [("add", "7")]
    assert verify_application_token(hook, "tok") and not verify_application_token(hook, "other")
    assert not verify_application_token(hook, "")


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ("ONCRMDEALADD", "add"),
        ("ONCRMDEALUPDATE", "update"),
        ("ONCRMDEALDELETE", "delete"),
        ("ONCRMDEALMOVETOCATEGORY", "update"),
    ],
)
def test_event_kinds_from_an_app_delivery(event: str, kind: str) -> None:
    pairs = [
        ("event", event),
        ("event_handler_id", "975"),
        ("data[FIELDS][ID]", "410"),
        ("data[FIELDS][CATEGORY_ID]", "3"),
        ("ts", "1766047124"),
        ("auth[access_token]", "abc"),
        ("auth[expires_in]", "3600"),
        ("auth[scope]", "crm"),
        ("auth[domain]", "x.bitrix24.com"),
        ("auth[status]", "L"),
        ("auth[member_id]", "m1"),
        ("auth[application_token]", "t1"),
    ]
    hook = parse_webhook(urlencode(pairs).encode(), FORM)
    [parsed] = hook.events
    assert (parsed.kind, parsed.deal_id, hook.event_handler_id) == (kind, "410", "975")
    assert parsed.dedupe_key == f"bitrix24:{event}:410:1766047124"
    assert hook.fields["CATEGORY_ID"] == "3"


def test_dedupe_key_differs_per_event_and_time() -> None:
    a = parse_webhook(b"event=ONCRMDEALUPDATE&data[FIELDS][ID]=1&ts=100", FORM).events[0]
    b = parse_webhook(b"event=ONCRMDEALUPDATE&data[FIELDS][ID]=1&ts=101", FORM).events[0]
    c = parse_webhook(b"event=ONCRMDEALADD&data[FIELDS][ID]=1&ts=100", FORM).events[0]
    again = parse_webhook(b"event=ONCRMDEALUPDATE&data[FIELDS][ID]=1&ts=100", FORM).events[0]
    assert len({a.dedupe_key, b.dedupe_key, c.dedupe_key}) == 3 and again.dedupe_key == a.dedupe_key


def test_stray_ampersand_is_tolerated() -> None:
    hook = parse_webhook(b"event=ONCRMDEALADD&data[FIELDS][ID]=3&ts=5&", FORM)
    assert [e.deal_id for e in hook.events] == ["3"]


def test_non_deal_event_parses_without_deal_events() -> None:
    hook = parse_webhook(b"event=ONAPPTEST&data[FIELDS][x]=1&ts=1&auth[member_id]=m", FORM)
    assert hook.events == [] and hook.event == "ONAPPTEST"


def test_json_relay_is_accepted() -> None:
    body = b'{"event": "ONCRMDEALDELETE", "data": {"FIELDS": {"ID": "5"}}, "ts": "10", "auth": {"application_token": "t"}}'
    hook = parse_webhook(body, "application/json")
    assert [(e.kind, e.deal_id) for e in hook.events] == [("delete", "5")] and hook.application_token == "t"


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", FORM, "empty body"),
        (b"   ", FORM, "empty body"),
        (b"\xff\xfe\x00garbage", FORM, "not UTF-8"),
        (b"data[FIELDS][ID]=1&ts=1", FORM, "no `event`"),
        (b"event=ONCRMDEALUPDATE&ts=1", FORM, "without data[FIELDS][ID]"),
        (b"event=ONCRMDEALUPDATE&data[FIELDS][ID]=abc&ts=1", FORM, "numeric deal id"),
        (b"event=ONCRMDEALUPDATE&data[FIELDS][ID]=1&ts=yesterday", FORM, "unix seconds"),
        (b"event=ONCRMDEALUPDATE&data[FIELDS][ID]=1&ts=99999999999999999999", FORM, "out of range"),
        (b"just some text", FORM, "form-encoded"),
        (b"&&&", FORM, "form-encoded"),
        (b"<xml/>", "text/xml", "unsupported content type"),
        (b"{not json", "application/json", "not valid JSON"),
        (b"[1, 2]", "application/json", "must be an object"),
        (b'{"event": null}', "application/json", "no `event`"),
        (b"x" * 1_000_001, FORM, "too large"),
    ],
)
def test_malformed_bodies_raise_webhook_parse_error(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(WebhookParseError, match=re.escape(message)):
        parse_webhook(body, content_type)
    assert issubclass(WebhookParseError, ValueError) and WebhookParseError is base.WebhookParseError


def test_random_bodies_only_ever_raise_webhook_parse_error() -> None:
    import random

    rng = random.Random(24)
    pieces = [
        b"event=",
        b"ONCRMDEALUPDATE",
        b"&",
        b"data[FIELDS][ID]=",
        b"%",
        b"%ZZ",
        b"\xff",
        b"ts=",
        b"1",
        b"=",
        b"[",
        b"]",
    ]
    parsed = 0
    for _ in range(2000):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        content_type = rng.choice([FORM, "application/json", "", "text/plain"])
        try:
            parse_webhook(body, content_type)
            parsed += 1
        except WebhookParseError:
            pass
    assert parsed > 0  # some random bodies are valid events: the generator is not trivially broken


def test_read_auth_works_even_when_the_event_part_is_broken() -> None:
    body = b"event=ONCRMDEALUPDATE&data[FIELDS][ID]=oops&auth[domain]=d.bitrix24.ru&auth[member_id]=m&auth[application_token]=t"
    with pytest.raises(WebhookParseError):
        parse_webhook(body, FORM)
    auth = read_auth(body, FORM)
    assert (auth.domain, auth.member_id, auth.application_token) == ("d.bitrix24.ru", "m", "t")
    assert read_auth(CAPTURE, FORM).member_id == "51e2c566fe259c926c60bc06c7158cda"
    with pytest.raises(WebhookParseError):
        read_auth(b"", FORM)
