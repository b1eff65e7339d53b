"""Connections kept between deliveries (app.webhooks.known_connections): the receiver looks a
connection up once, not per delivery, yet a credential changed or a connection removed by another
process takes effect for the next delivery, in both directions (an old credential is refused, a new
one accepted). Real HTTP, both databases; the changes are made through a separate engine, as the CLI
or a second worker would make them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import delete, event, select
from sqlalchemy.engine import Engine

from app.connections import service as connections
from app.connections.models import Connection
from app.webhooks.group_commit import Delivery, GroupCommitter
from app.webhooks.known_connections import ConnectionStamp, StaleConnection
from app.webhooks.models import InboxEvent
from tests.support import web
from tests.support.crm import settings_for
from tests.support.db import open_sessions
from tests.webhooks.receiver_support import FORM, Service, amo_body, bitrix24_record, bitrix_body


@contextmanager
def lookups_by_name() -> Iterator[list[str]]:
    """Statements that look a connection up by its name, on any engine of this process (the served
    app's included)."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM connections" in statement and "connections.name =" in statement:
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def change_credentials(service: Service, tmp_path: Path, name: str, **values: str) -> None:
    settings = settings_for(tmp_path, service.database_url)

    async def change() -> None:
        async with open_sessions(service.database_url) as sessions, sessions.begin() as session:
            record = await connections.get_connection(session, name)
            connections.store_credentials(
                settings, record, {**connections.credentials(settings, record), **values}
            )

    asyncio.run(change())


def amo_url(service: Service, secret: str) -> str:
    return f"{service.url}/webhooks/amocrm/amo/{secret}"


def test_deliveries_look_the_connection_up_once(service: Service) -> None:
    with lookups_by_name() as lookups:
        for lead in (1, 2, 3):
            response = web.post(amo_url(service, service.amo_secret), content=amo_body(lead), headers=FORM)
            assert response.json() == {"status": "accepted"}
    assert len(lookups) == 1
    assert len(service.inbox()) == 3


def test_an_amocrm_secret_changed_elsewhere_takes_effect_for_the_next_delivery(
    service: Service, tmp_path: Path
) -> None:
    first = web.post(amo_url(service, service.amo_secret), content=amo_body(1), headers=FORM)
    assert first.json() == {"status": "accepted"}  # the connection is now kept
    change_credentials(service, tmp_path, "amo", webhook_secret="a-new-secret-0123456789")

    old = web.post(amo_url(service, service.amo_secret), content=amo_body(2), headers=FORM)
    assert old.status_code == 401 and "secret" in old.json()["detail"]
    new = web.post(amo_url(service, "a-new-secret-0123456789"), content=amo_body(3), headers=FORM)
    assert new.json() == {"status": "accepted"}
    assert len(service.inbox()) == 2  # the first and the third; the refused one stored nothing


def test_a_bitrix24_token_changed_elsewhere_takes_effect_for_the_next_delivery(
    service: Service, tmp_path: Path
) -> None:
    url = f"{service.url}/webhooks/bitrix24/b24"
    assert web.post(url, content=bitrix_body(1), headers=FORM).json() == {"status": "accepted"}
    change_credentials(service, tmp_path, "b24", app_token="b24-rotated-token")

    old = web.post(url, content=bitrix_body(2), headers=FORM)
    assert old.status_code == 401 and "application_token" in old.json()["detail"]
    new = web.post(url, content=bitrix_body(3, token="b24-rotated-token"), headers=FORM)
    assert new.json() == {"status": "accepted"}
    assert len(service.inbox()) == 2


def test_a_connection_removed_elsewhere_refuses_its_deliveries(service: Service) -> None:
    # A refused delivery reads the connection and keeps it, storing nothing.
    assert web.post(amo_url(service, "wrong-secret"), content=amo_body(1), headers=FORM).status_code == 401

    async def remove() -> None:
        async with open_sessions(service.database_url) as sessions, sessions.begin() as session:
            await session.execute(delete(Connection).where(Connection.name == "amo"))

    asyncio.run(remove())
    gone = web.post(amo_url(service, service.amo_secret), content=amo_body(2), headers=FORM)
    assert gone.status_code == 401 and "secret" in gone.json()["detail"]
    assert service.inbox() == []


async def test_the_group_commit_hands_back_deliveries_checked_against_a_changed_row(
    database_url: str,
) -> None:
    """A delivery whose stamp no longer matches its connection's row is not stored; the others of
    its group are."""
    async with open_sessions(database_url) as sessions:
        async with sessions.begin() as session:
            record = Connection(name="b24", crm="bitrix24", base_url="http://x/", credentials_encrypted="v1")
            session.add(record)
            await session.flush()
            current = ConnectionStamp.of_record(record)
        outdated = ConnectionStamp(current.name, current.crm, "v0", current.identity)
        group = [
            Delivery(record.id, "fresh", b"body", "text/plain", stamp=current),
            Delivery(record.id, "stale", b"body", "text/plain", stamp=outdated),
            Delivery(record.id, "unchecked", b"body", "text/plain"),
        ]
        committer = GroupCommitter(sessions)
        outcomes = await asyncio.gather(*(committer.store(d) for d in group), return_exceptions=True)
        assert outcomes[0] is True and isinstance(outcomes[1], StaleConnection) and outcomes[2] is True
        assert committer.groups == 1
        async with sessions() as session:
            keys = set(await session.scalars(select(InboxEvent.dedupe_key)))
        assert keys == {"fresh", "unchecked"}


def test_settings_the_check_does_not_read_leave_the_kept_row_in_use(service: Service) -> None:
    """Jobs write other settings all the time (the webhook check's state, token dates): the kept
    row stays in use and the delivery is stored at once."""
    assert (
        web.post(amo_url(service, service.amo_secret), content=amo_body(1), headers=FORM).status_code == 200
    )

    async def note_check() -> None:
        async with open_sessions(service.database_url) as sessions, sessions.begin() as session:
            record = await connections.get_connection(session, "amo")
            record.settings = {**record.settings, "webhook": {"state": "registered"}}

    asyncio.run(note_check())
    with lookups_by_name() as lookups:
        second = web.post(amo_url(service, service.amo_secret), content=amo_body(2), headers=FORM)
    assert second.json() == {"status": "accepted"} and lookups == []


def test_a_bitrix24_token_seen_first_is_recorded_once_then_the_row_is_kept(service: Service) -> None:
    url = f"{service.url}/webhooks/bitrix24/b24"
    with lookups_by_name() as lookups:
        for deal_id in (1, 2, 3, 4):
            assert web.post(url, content=bitrix_body(deal_id), headers=FORM).json() == {"status": "accepted"}
    # Read for the first delivery, which recorded the token as seen; read again once for the next
    # (the kept copy did not show it); kept from then on.
    assert len(lookups) == 2


def test_a_name_taken_over_by_another_crm_elsewhere_is_read_again_before_a_refusal(
    service: Service, tmp_path: Path
) -> None:
    """The kept row says amoCRM; meanwhile the name became a Bitrix24 connection. Its delivery is
    not refused on the kept row's word."""
    assert web.post(amo_url(service, "wrong-secret"), content=amo_body(1), headers=FORM).status_code == 401
    settings = settings_for(tmp_path, service.database_url)
    replacement = bitrix24_record(settings, "amo")

    async def replace() -> None:
        async with open_sessions(service.database_url) as sessions, sessions.begin() as session:
            await session.execute(delete(Connection).where(Connection.name == "amo"))
            session.add(replacement)

    asyncio.run(replace())
    response = web.post(f"{service.url}/webhooks/bitrix24/amo", content=bitrix_body(5), headers=FORM)
    assert response.json() == {"status": "accepted"}
    assert len(service.inbox()) == 1
