"""One bad event never stops the inbox (issue #16 item 1).

Hostile deliveries (ids `str.isdigit()` accepts but `int()` refuses, ids of thousands of digits,
negative, empty, nested, non-UTF-8, Unicode digits, huge bodies) are stored pending ahead of real
events on a Bitrix24 and an amoCRM connection, as a FunnelSync before the id checks stored them. The
processor fails each hostile event with its reason and still mirrors every real event the sandboxes
posted to the running service, on both connections. Real HTTP throughout, both databases.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections.models import Connection
from app.deals.models import Deal
from app.funnels.models import Funnel, FunnelStage
from app.main import create_app
from app.webhooks.models import InboxEvent
from app.webhooks.processor import EventParser, _numeric_first, process_inbox
from app.webhooks.service import dedupe_key, store_event
from connectors.base import CRMConnector, DealEvent, WebhookParseError
from connectors.events import parse_deal_events
from funnel_templates.loader import library
from tests.funnels.conftest import Provisioner
from tests.support import web
from tests.support.crm import APP_TOKEN, CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.notify import RequestCounter
from tests.support.server import bound_socket, serve_asgi

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
AUTH = {"Authorization": "Bearer test-token-1234567890"}
TS = "1766047124"


def bitrix24_event(deal_id: str) -> bytes:
    """An authentic ONCRMDEALUPDATE (the portal's application token) naming `deal_id`."""
    return urlencode(
        {
            "event": "ONCRMDEALUPDATE",
            "data[FIELDS][ID]": deal_id,
            "ts": TS,
            "auth[domain]": "portal.bitrix24.ru",
            "auth[application_token]": APP_TOKEN,
        }
    ).encode()


def amocrm_event(lead_id: str, **fields: str) -> bytes:
    """A status webhook of lead `lead_id`, shaped like the real capture (docs/crm/amocrm.md §7)."""
    lead = {"id": lead_id, "status_id": "30", "pipeline_id": "3", "name": "Lead", "last_modified": TS}
    lead.update(fields)
    pairs = {f"leads[status][0][{key}]": value for key, value in lead.items()}
    return urlencode({**pairs, "account[subdomain]": "acme", "account[id]": "29085955"}).encode()


# Ids both parsers must refuse: what str.isdigit() accepts but int() refuses or reads as another id,
# what int() refuses for its length, and what is plainly no id.
HOSTILE_IDS = {
    "superscript two": "²",
    "superscript digits": "¹²³",
    "4,301 digits": "9" * 4301,
    "100,000 digits": "7" * 100_000,
    "21 digits": "1" * 21,
    "negative": "-5",
    "empty": "",
    "arabic-indic digit": "٣",
    "fullwidth digit": "５",
    "devanagari digits": "४२",
    "decimal": "3.0",
    "plus sign": "+3",
}

HOSTILE_BITRIX24 = {
    **{name: (bitrix24_event(value), FORM) for name, value in HOSTILE_IDS.items()},
    "nested brackets": (bitrix24_event("5").replace(b"ID%5D=5", b"ID%5D%5B0%5D=5"), FORM),
    "non-UTF-8 bytes": (bitrix24_event("5").replace(b"ID%5D=5", b"ID%5D=\xff\xfe5"), FORM),
    "huge body": (bitrix24_event("5") + b"&data%5BFIELDS%5D%5BTITLE%5D=" + b"x" * 1_000_001, FORM),
    "JSON nested id": (
        json.dumps({"event": "ONCRMDEALADD", "data": {"FIELDS": {"ID": {"ID": "5"}}}}).encode(),
        JSON,
    ),
    "JSON superscript id": (
        json.dumps({"event": "ONCRMDEALADD", "data": {"FIELDS": {"ID": "²"}}}, ensure_ascii=False).encode(),
        JSON,
    ),
}

HOSTILE_AMOCRM = {
    **{name: (amocrm_event(value), FORM) for name, value in HOSTILE_IDS.items()},
    "superscript status id": (amocrm_event("5", status_id="²"), FORM),
    "4,301-digit pipeline id": (amocrm_event("5", pipeline_id="9" * 4301), FORM),
    "nested brackets": (amocrm_event("5").replace(b"%5Bid%5D=5", b"%5Bid%5D%5B0%5D=5"), FORM),
    "non-UTF-8 bytes": (amocrm_event("5").replace(b"%5Bid%5D=5", b"%5Bid%5D=\xff5"), FORM),
    "too many fields": (amocrm_event("5") + b"&x%5B%5D=1" * 20_001, FORM),
}


# --- the id check itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "bitrix24", "amocrm"),
    [
        ("39", "39", "39"),
        (" 39 ", "39", "39"),
        ("0039", "0039", "39"),  # Bitrix24 ids are kept as sent; amoCRM's are normalised
        ("1" * 20, "1" * 20, "1" * 20),
        *[(value, None, None) for value in HOSTILE_IDS.values()],
    ],
    ids=["plain", "padded", "leading zeros", "20 digits", *HOSTILE_IDS],
)
def test_ids_are_ascii_digits_of_sane_length(raw: str, bitrix24: str | None, amocrm: str | None) -> None:
    for crm, body, expected in (
        ("bitrix24", bitrix24_event(raw), bitrix24),
        ("amocrm", amocrm_event(raw), amocrm),
    ):
        if expected is None:
            with pytest.raises(WebhookParseError, match=r"(?i)id"):
                parse_deal_events(crm, body, FORM)
        else:
            [event] = parse_deal_events(crm, body, FORM)
            assert event.deal_id == expected, crm


def test_fetch_order_sort_key_never_raises() -> None:
    ids = ["10", "9", "²", "9" * 4301, "abc", "010"]
    assert sorted(ids, key=_numeric_first) == ["9", "10", "010", "9" * 4301, "abc", "²"]


# --- the processor against both sandboxes -----------------------------------------------------


@dataclass
class Live:
    """One CRM sandbox posting to the running FunnelSync, its connection and its funnel's first stage."""

    sandbox: CRMSandbox
    record: Connection
    pipeline_id: str
    stage_id: str

    def create_deal(self, title: str) -> str:
        return self.sandbox.create_deal(title, self.pipeline_id, self.stage_id)


@dataclass
class Service:
    sessions: async_sessionmaker[AsyncSession]
    hooks: RequestCounter
    url: str
    crms: dict[str, Live]

    async def store_pending(self, crm: str, body: bytes, content_type: str) -> int:
        """A delivery stored as pending, as a FunnelSync before the id checks stored it."""
        async with self.sessions.begin() as session:
            assert await store_event(
                session, self.crms[crm].record.id, dedupe_key([], body), body, content_type
            )
            event_id = await session.scalar(select(InboxEvent.id).order_by(InboxEvent.id.desc()))
            assert event_id is not None
            return event_id

    async def process(self, parse: EventParser = parse_deal_events) -> None:
        async def connector_for(record: Connection) -> CRMConnector:
            crm = next(live for live in self.crms.values() if live.record.id == record.id)
            connectors.append(crm.sandbox.connector())
            return connectors[-1]

        connectors: list[CRMConnector] = []
        try:
            await process_inbox(self.sessions, connector_for, parse)
        finally:
            for connector in connectors:
                await connector.aclose()

    async def events(self) -> dict[int, tuple[str, str | None]]:
        async with self.sessions() as session:
            rows = await session.execute(select(InboxEvent.id, InboxEvent.status, InboxEvent.error))
            return {event_id: (status, error) for event_id, status, error in rows}

    async def mirrored(self, crm: str) -> set[str]:
        async with self.sessions() as session:
            query = select(Deal.crm_deal_id).where(Deal.connection_id == self.crms[crm].record.id)
            return set(await session.scalars(query))


@contextmanager
def _both_sandboxes(url: str) -> Iterator[dict[str, CRMSandbox]]:
    with ExitStack() as stack:
        yield {
            "bitrix24": stack.enter_context(
                crm_sandbox("bitrix24", webhook_url=f"{url}/webhooks/bitrix24/bitrix24")
            ),
            "amocrm": stack.enter_context(crm_sandbox("amocrm")),
        }


async def _provisioned(provisioner: Provisioner) -> Live:
    """The typical funnel provisioned (for amoCRM this registers the webhook); its first stage."""
    assert (await provisioner.run(library()["general.typical"])).applied
    async with provisioner.sessions() as session:
        funnel = await session.scalar(select(Funnel).where(Funnel.connection_id == provisioner.record.id))
        assert funnel is not None and funnel.crm_pipeline_id
        first = await session.scalar(
            select(FunnelStage).where(FunnelStage.funnel_id == funnel.id).order_by(FunnelStage.sort)
        )
        assert first is not None and first.crm_stage_id
    return Live(provisioner.sandbox, provisioner.record, funnel.crm_pipeline_id, first.crm_stage_id)


@pytest.fixture
async def service(database_url: str, tmp_path: Path) -> AsyncIterator[Service]:
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = settings_for(tmp_path, database_url).model_copy(update={"public_url": url})
    hooks = RequestCounter(create_app(settings))
    with serve_asgi(hooks, sock=sock), _both_sandboxes(url) as sandboxes:
        async with open_sessions(database_url) as sessions:
            crms: dict[str, Live] = {}
            for crm, sandbox in sandboxes.items():
                record = sandbox.connection(settings, name=crm)
                async with sessions.begin() as session:
                    session.add(record)
                crms[crm] = await _provisioned(Provisioner(sandbox, sessions, settings, record))
            yield Service(sessions, hooks, url, crms)


async def _real_deals(service: Service, per_crm: int) -> dict[str, list[str]]:
    """Deals a person creates in each CRM; waits until their webhooks were stored (HTTP 200)."""
    created = {
        crm: [live.create_deal(f"Сделка {n}") for n in range(per_crm)] for crm, live in service.crms.items()
    }
    expected = per_crm * len(service.crms)
    assert service.hooks.wait_for(expected) >= expected, "webhooks did not arrive"
    assert set(service.hooks.statuses) == {200}
    return created


async def test_hostile_events_fail_alone_and_real_events_are_mirrored(service: Service) -> None:
    hostile = {
        "bitrix24": [await service.store_pending("bitrix24", *body) for body in HOSTILE_BITRIX24.values()],
        "amocrm": [await service.store_pending("amocrm", *body) for body in HOSTILE_AMOCRM.values()],
    }
    created = await _real_deals(service, per_crm=2)

    await service.process()

    events = await service.events()
    for crm, ids in hostile.items():
        for event_id, name in zip(
            ids, HOSTILE_BITRIX24 if crm == "bitrix24" else HOSTILE_AMOCRM, strict=True
        ):
            status, error = events[event_id]
            assert status == "failed" and error and error.startswith("cannot parse webhook body"), (crm, name)
    real = set(events) - {event_id for ids in hostile.values() for event_id in ids}
    assert len(real) >= 4 and {events[event_id][0] for event_id in real} == {"processed"}
    for crm, deal_ids in created.items():
        assert set(deal_ids) <= await service.mirrored(crm), crm

    # And the operators see each of them as failed, with its reason.
    async with web.async_client(base_url=service.url, headers=AUTH) as api:
        listed = (await api.get("/api/events", params={"status": "failed", "limit": 500})).json()
    assert {e["id"] for e in listed} == {event_id for ids in hostile.values() for event_id in ids}
    assert all(e["error"] for e in listed)


class ParserBug(RuntimeError):
    pass


def _parser_with_a_bug(crm: str, body: bytes, content_type: str) -> list[DealEvent]:
    """The real parser, but one that breaks its contract (raises something not a parse error) on
    one body: the kind of bug that used to abort the whole inbox run."""
    if b"parser-bug" in body:
        raise ParserBug("unexpected state " + "x" * 2000)
    return parse_deal_events(crm, body, content_type)


async def test_an_unexpected_error_fails_only_its_event(service: Service) -> None:
    # A real event of each CRM ahead of the buggy one in the same batch, and one after it.
    before = await _real_deals(service, per_crm=1)
    buggy = {
        "bitrix24": await service.store_pending("bitrix24", bitrix24_event("1") + b"&parser-bug=1", FORM),
        "amocrm": await service.store_pending("amocrm", amocrm_event("1") + b"&parser-bug=1", FORM),
    }
    after = {crm: [live.create_deal("После")] for crm, live in service.crms.items()}
    assert service.hooks.wait_for(4) >= 4 and set(service.hooks.statuses) == {200}

    await service.process(_parser_with_a_bug)

    events = await service.events()
    for event_id in buggy.values():
        status, error = events[event_id]
        assert status == "failed" and error and error.startswith("processing failed: ParserBug: unexpected")
        assert len(error) <= 500  # the reason is kept, truncated
    others = set(events) - set(buggy.values())
    assert len(others) == 4 and {events[event_id][0] for event_id in others} == {"processed"}
    for crm in service.crms:
        assert set(before[crm] + after[crm]) <= await service.mirrored(crm), crm
