"""Failed inbox events sent back to the processor over the API (real HTTP, both databases): one by id,
or all of a connection's; what is not failed is refused, what does not exist is 404. End to end, a
retried event really is parsed again: with the same parser it fails again, one attempt more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections import service as connections
from app.connections.models import Connection
from app.main import create_app
from app.webhooks.models import InboxEvent
from app.webhooks.processor import process_inbox
from app.webhooks.service import store_event
from connectors.amocrm.descriptor import AmoCRMConnectionCreate
from connectors.base import CRMConnector
from connectors.bitrix24.descriptor import Bitrix24ConnectionCreate
from connectors.events import parse_deal_events
from tests.support import web
from tests.support.crm import settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

AUTH = {"Authorization": "Bearer test-token-1234567890"}
FORM = "application/x-www-form-urlencoded"
# Authenticated by the URL's secret but not a lead event amoCRM's parser can read (a non-numeric id).
GARBAGE = b"leads[status][0][id]=abc&leads[status][0][status_id]=&account[subdomain]=acme"


@dataclass
class Inbox:
    sessions: async_sessionmaker[AsyncSession]
    api: httpx.AsyncClient
    ids: dict[str, int]  # connection name -> id

    async def add(self, connection: str, status: str, number: int) -> int:
        """An event as a stored row (what the receiver and processor leave behind)."""
        async with self.sessions.begin() as session:
            event = InboxEvent(
                connection_id=self.ids[connection],
                dedupe_key=f"{connection}-{status}-{number}",
                content_type=FORM,
                body=GARBAGE,
                status=status,
                error="cannot parse webhook body: bad id" if status == "failed" else None,
                attempts=1,
            )
            session.add(event)
            await session.flush()
            return event.id

    async def statuses(self) -> dict[int, tuple[str, str | None, int]]:
        async with self.sessions() as session:
            rows = await session.execute(
                select(InboxEvent.id, InboxEvent.status, InboxEvent.error, InboxEvent.attempts)
            )
            return {event_id: (status, error, attempts) for event_id, status, error, attempts in rows}


@pytest.fixture
async def inbox(database_url: str, tmp_path: Path) -> AsyncIterator[Inbox]:
    settings = settings_for(tmp_path, database_url)
    records = [
        connections.build_record(
            settings,
            Bitrix24ConnectionCreate(
                name="b24",
                crm="bitrix24",
                webhook_url="https://acme.bitrix24.ru/rest/1/abc123/",
                app_token=SecretStr("app-token"),
            ),
            None,
        ),
        connections.build_record(
            settings,
            AmoCRMConnectionCreate(name="amo", crm="amocrm", subdomain="acme", token=SecretStr("t")),
            None,
        ),
    ]
    async with open_sessions(database_url) as sessions:
        async with sessions.begin() as session:
            session.add_all(records)
        with serve_asgi(create_app(settings)) as url:
            async with web.async_client(base_url=url, headers=AUTH, timeout=30) as api:
                yield Inbox(sessions, api, {r.name: r.id for r in records})


async def no_crm(record: Connection) -> CRMConnector:
    raise AssertionError("an event that cannot be parsed must not make the processor ask the CRM")


async def test_one_event_is_retried_by_id(inbox: Inbox) -> None:
    failed = await inbox.add("b24", "failed", 1)
    processed = await inbox.add("b24", "processed", 2)

    response = await inbox.api.post(f"/api/events/{failed}/retry")

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["connection"], body["status"]) == (failed, "b24", "pending")
    # The last error stays until the event is processed again; the attempts keep counting.
    assert (body["error"], body["attempts"], body["processed_at"]) == (
        "cannot parse webhook body: bad id",
        1,
        None,
    )
    again = await inbox.api.post(f"/api/events/{failed}/retry")  # now pending: not failed any more
    assert again.status_code == 409 and "pending" in again.json()["detail"]
    refused = await inbox.api.post(f"/api/events/{processed}/retry")
    assert refused.status_code == 409 and "processed" in refused.json()["detail"]
    missing = await inbox.api.post("/api/events/999999/retry")
    assert missing.status_code == 404 and "999999" in missing.json()["detail"]
    states = await inbox.statuses()
    assert (states[failed][0], states[processed][0]) == ("pending", "processed")


async def test_bulk_retry_counts_what_matches(inbox: Inbox) -> None:
    b24 = [await inbox.add("b24", "failed", n) for n in range(3)]
    amo = [await inbox.add("amo", "failed", n) for n in range(2)]
    done = await inbox.add("amo", "processed", 9)

    by_connection = await inbox.api.post("/api/events/retry", json={"connection": "amo"})
    assert by_connection.status_code == 200 and by_connection.json() == {"retried": 2}
    states = await inbox.statuses()
    assert [states[i][0] for i in amo] == ["pending", "pending"] and states[done][0] == "processed"
    assert {states[i][0] for i in b24} == {"failed"}

    # Ids and a connection together: only the b24 one of these, and not the processed one.
    both = await inbox.api.post(
        "/api/events/retry", json={"connection": "b24", "ids": [b24[0], done, amo[0]]}
    )
    assert both.json() == {"retried": 1}
    nothing = await inbox.api.post("/api/events/retry", json={"ids": []})
    assert nothing.json() == {"retried": 0}
    unknown = await inbox.api.post("/api/events/retry", json={"connection": "nope"})
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    extra = await inbox.api.post("/api/events/retry", json={"status": "failed"})
    assert extra.status_code == 422
    rest = await inbox.api.post("/api/events/retry", json={})
    assert rest.json() == {"retried": 2}
    assert {status for status, _, _ in (await inbox.statuses()).values()} == {"pending", "processed"}


async def test_a_retried_event_is_parsed_again(inbox: Inbox) -> None:
    async with inbox.sessions.begin() as session:
        assert await store_event(session, inbox.ids["amo"], "garbage-1", GARBAGE, FORM)
    first = await process_inbox(inbox.sessions, no_crm, parse_deal_events)
    assert (first.processed, first.failed) == (0, 1)
    [(event_id, (status, error, attempts))] = (await inbox.statuses()).items()
    assert status == "failed" and error and error.startswith("cannot parse webhook body") and attempts == 1
    listed = (await inbox.api.get("/api/events", params={"status": "failed"})).json()
    assert [e["id"] for e in listed] == [event_id]

    retried = await inbox.api.post(f"/api/events/{event_id}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    assert (await inbox.statuses())[event_id] == ("pending", error, 1)

    # The parser has not changed, so the event fails again, with the same reason, one attempt more.
    second = await process_inbox(inbox.sessions, no_crm, parse_deal_events)
    assert (second.processed, second.failed) == (0, 1)
    assert (await inbox.statuses())[event_id] == ("failed", error, 2)
    nothing_pending = await process_inbox(inbox.sessions, no_crm, parse_deal_events)
    assert (nothing_pending.processed, nothing_pending.failed) == (0, 0)
