"""parse_webhook on bodies shaped like real amoCRM captures (docs/crm/amocrm.md §7), and on garbage."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import quote, urlencode

import pytest

from connectors.amocrm.events import WebhookParseError, parse_webhook

FORM = "application/x-www-form-urlencoded"

# The captured status hook of docs/crm/amocrm.md §7, verbatim key order, percent-encoded as sent.
CAPTURE = (
    "leads[status][0][id]=10701093&leads[status][0][name]=Семинар&leads[status][0][status_id]=142"
    "&leads[status][0][old_status_id]=20067736&leads[status][0][price]=22500"
    "&leads[status][0][responsible_user_id]=2079676&leads[status][0][last_modified]=1539782664"
    "&leads[status][0][modified_user_id]=2079718&leads[status][0][created_user_id]=2076025"
    "&leads[status][0][date_create]=1539782209&leads[status][0][pipeline_id]=9217056"
    "&leads[status][0][tags][0][id]=80147&leads[status][0][tags][0][name]=повторное+обращение"
    "&leads[status][0][account_id]=17769199"
    "&leads[status][0][custom_fields][0][id]=66339&leads[status][0][custom_fields][0][name]=Источник"
    "&leads[status][0][custom_fields][0][values][0][value]=Сайт&leads[status][0][custom_fields][0][values][0][enum]=139517"
    "&leads[status][0][custom_fields][2][id]=72333&leads[status][0][custom_fields][2][values][0]=1542067200"
    "&account[subdomain]=apfitness"
)


def _encode(raw: str) -> bytes:
    """Percent-encode keys and values like a form POST (brackets included)."""
    pairs = [p.split("=", 1) for p in raw.split("&")]
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='+')}" for k, v in pairs).encode()


def test_real_status_capture() -> None:
    hook = parse_webhook(_encode(CAPTURE), FORM)
    assert (hook.subdomain, hook.account_id) == ("apfitness", "17769199")  # account from the lead
    [event] = hook.events
    assert (event.kind, event.deal_id) == ("status", "10701093")
    assert event.dedupe_key == "amocrm:status:10701093:1539782664"
    snap = event.snapshot
    assert snap is not None
    assert (snap.pipeline_id, snap.stage_id, snap.title, snap.closed) == ("9217056", "142", "Семинар", True)
    assert snap.amount == Decimal(22500) and snap.responsible_id == "2079676"
    assert snap.updated_at == datetime.fromtimestamp(1539782664, UTC)
    assert snap.created_at == datetime.fromtimestamp(1539782209, UTC)
    assert snap.fields == {"66339": "Сайт", "72333": "1542067200"}  # select text; date as values[0]


def test_several_leads_and_kinds_in_one_post() -> None:
    pairs = []
    for kind, index, lead_id, status in (
        ("update", 0, 1, 11),
        ("update", 1, 2, 12),
        ("status", 0, 1, 11),
        ("add", 0, 3, 13),
    ):
        p = f"leads[{kind}][{index}]"
        pairs += [
            (f"{p}[id]", str(lead_id)),
            (f"{p}[name]", f"Lead {lead_id}"),
            (f"{p}[status_id]", str(status)),
            (f"{p}[pipeline_id]", "7"),
            (f"{p}[price]", ""),
            (f"{p}[responsible_user_id]", "5"),
            (f"{p}[last_modified]", str(1700000000 + lead_id)),
            (f"{p}[created_at]", "1690000000"),
            (f"{p}[updated_at]", str(1700000000 + lead_id)),
        ]
    pairs += [
        ("account[subdomain]", "acme"),
        ("account[id]", "29001234"),
        ("account[_links][self]", "https://acme.amocrm.ru"),
    ]
    hook = parse_webhook(urlencode(pairs).encode(), FORM + "; charset=UTF-8")
    assert hook.account_id == "29001234" and hook.subdomain == "acme"
    assert [(e.kind, e.deal_id) for e in hook.events] == [
        ("add", "3"),
        ("update", "1"),
        ("update", "2"),
        ("status", "1"),
    ]
    assert len({e.dedupe_key for e in hook.events}) == 4
    assert all(e.snapshot is not None and e.snapshot.amount is None for e in hook.events)


def test_key_both_scalar_and_nested() -> None:
    body = urlencode(
        [
            ("leads[update][0][id]", "5"),
            ("leads[update][0][status_id]", "20"),
            ("leads[update][0][pipeline_id]", "3"),
            ("leads[update][0][last_modified]", "1700000000"),
            ("leads[update][0][custom_fields]", ""),
            ("leads[update][0][custom_fields][0][id]", "77"),
            ("leads[update][0][custom_fields][0][values][0][value]", "x"),
            ("leads[update][0][custom_fields][0][values][1][value]", "y"),
            ("account[id]", "1"),
        ]
    ).encode()
    [event] = parse_webhook(body, FORM).events
    assert event.snapshot is not None and event.snapshot.fields == {"77": ["x", "y"]}


def test_delete_responsible_restore_and_non_lead_entities() -> None:
    body = urlencode(
        [
            ("leads[delete][0][id]", "9"),
            ("leads[delete][0][status_id]", "142"),
            ("leads[delete][0][pipeline_id]", "3"),
            ("leads[responsible][0][id]", "8"),
            ("leads[responsible][0][old_responsible_user_id]", "1"),
            ("leads[responsible][0][responsible_user_id]", "2"),
            ("leads[responsible][0][status_id]", "20"),
            ("leads[responsible][0][pipeline_id]", "3"),
            ("leads[responsible][0][updated_at]", "1700000100"),
            ("leads[note][0][note][text]", "hi"),
            ("task[add][0][id]", "55"),
            ("task[add][0][element_type]", "2"),
            ("account[subdomain]", "acme"),
        ]
    ).encode()
    events = parse_webhook(body, FORM).events
    assert [(e.kind, e.deal_id) for e in events] == [("responsible", "8"), ("delete", "9")]
    assert events[0].snapshot is not None and events[0].snapshot.responsible_id == "2"
    assert events[1].snapshot is None and events[1].dedupe_key == "amocrm:delete:9:s142"


def test_lead_without_state_yields_event_without_snapshot() -> None:
    body = b"leads[update][0][id]=12&account[id]=3"
    [event] = parse_webhook(body, FORM).events
    assert event.deal_id == "12" and event.snapshot is None  # the processor fetches the lead


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", FORM, "empty"),
        (b"\xff\xfe\x00garbage", FORM, "UTF-8"),
        (b'{"leads": []}', "application/json", "content type"),
        (b"leads[update][0][id]=abc&account[id]=1", FORM, "numeric id"),
        (b"leads[update][x]=1&account[id]=1", FORM, "not a lead"),
        (b"leads=1&account[id]=1", FORM, "nested list"),
        (b"foo=bar", FORM, "account"),
        (b"a]b[=1", FORM, "form key"),
        (
            b"leads[update][0][id]=1&leads[update][0][status_id]=2&leads[update][0][pipeline_id]=3"
            b"&leads[update][0][last_modified]=soon&account[id]=1",
            FORM,
            "timestamp",
        ),
    ],
)
def test_malformed_bodies_raise_one_clear_error(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(WebhookParseError) as error:
        parse_webhook(body, content_type)
    assert message in str(error.value)


def test_fuzzed_garbage_only_ever_raises_webhook_parse_error() -> None:
    rng = random.Random(20261123)
    valid = _encode(CAPTURE)
    alphabet = b"[]=&%+;0123456789abcxyz\x00\xff\xd0\x90 "
    for _ in range(3000):
        choice = rng.random()
        if choice < 0.4:  # random bytes from a hostile alphabet
            body = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        elif choice < 0.8:  # a real body with a few bytes flipped
            data = bytearray(valid)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.choice(alphabet)
            body = bytes(data)
        else:  # a real body cut short
            body = valid[: rng.randrange(len(valid))]
        try:
            hook = parse_webhook(body, FORM)
        except WebhookParseError:
            continue
        assert hook.account_id is not None or hook.subdomain is not None
