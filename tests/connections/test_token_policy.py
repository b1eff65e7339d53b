"""OAuth refresh policy (issue #11 item 3), against the Bitrix24 sandbox over real HTTP, both databases.

Bitrix24 asks apps not to refresh on a schedule (DOCS settings/oauth/auto-renewal.md: hourly or
daily refreshes are "excessive" and can get the app blocked): calls refresh on expired_token, and
the upkeep job renews only a refresh token that was not rotated for 30 days (it lapses after 180).
The lapse date is shown with a warning before it comes; the token answer's server_endpoint decides
where the next refresh goes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service
from app.connections.connector import ROTATED_AT, open_connector
from app.connections.jobs import refresh_tokens
from app.connections.models import Connection
from app.db import utcnow
from app.main import create_app
from app.status.connection import connection_status
from connectors import factory
from connectors.base import CRMConnector
from connectors.bitrix24.descriptor import Bitrix24ConnectionCreate
from tests.connectors.bitrix24 import conftest as b24
from tests.support import web
from tests.support.crm import settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

NAME = "b24app"


@dataclass
class OAuthPortal:
    box: b24.Sandbox
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    opened: list[CRMConnector] = field(default_factory=list)

    async def connector_for(self, record: Connection) -> CRMConnector:
        """What the scheduler's registry hands the job: a connector that saves what rotates."""
        connector = await open_connector(self.sessions, self.settings, record)
        self.opened.append(connector)
        return connector

    async def record(self) -> Connection:
        async with self.sessions() as session:
            return await service.get_connection(session, NAME)

    async def credentials(self) -> dict[str, Any]:
        return service.credentials(self.settings, await self.record())

    async def set(self, *, rotated_at: datetime | None, expires_at: datetime) -> None:
        """The refresh token was issued at `rotated_at` (None: unknown) and the access token
        expires at `expires_at`, as saved by earlier refreshes."""
        async with self.sessions.begin() as session:
            record = await service.get_connection(session, NAME)
            values = service.credentials(self.settings, record)
            values["expires_at"] = expires_at.isoformat()
            service.store_credentials(self.settings, record, values)
            settings = {k: v for k, v in record.settings.items() if k != ROTATED_AT}
            if rotated_at is not None:
                settings[ROTATED_AT] = rotated_at.isoformat()
            record.settings = settings

    def refreshes(self) -> int:
        return int(self.box.control("GET", "/_sandbox/oauth")["refreshes"])


@pytest.fixture
def portal_box() -> Iterator[b24.Sandbox]:
    with b24.running_sandbox() as box:
        yield box


@pytest.fixture
async def portal(portal_box: b24.Sandbox, database_url: str, tmp_path: Path) -> AsyncIterator[OAuthPortal]:
    """A Bitrix24 connection through an installed local app (OAuth), stored the way the API does."""
    box = portal_box
    settings = settings_for(tmp_path, database_url)
    data = Bitrix24ConnectionCreate(
        name=NAME,
        crm="bitrix24",
        portal_url=box.url,
        client_id=box.config.client_id,
        client_secret=SecretStr(box.config.client_secret),
        access_token=SecretStr(box.config.access_token),
        refresh_token=SecretStr(box.config.refresh_token),
        oauth_server_url=box.url,
    )
    async with open_sessions(database_url) as sessions:
        async with sessions.begin() as session:
            session.add(service.build_record(settings, data, None))
        harness = OAuthPortal(box, settings, sessions)
        try:
            yield harness
        finally:
            for connector in harness.opened:
                await connector.aclose()


async def test_bitrix24_access_tokens_are_refreshed_on_expired_token_not_on_a_schedule(
    portal: OAuthPortal,
) -> None:
    rotated = utcnow() - timedelta(days=1)
    await portal.set(rotated_at=rotated, expires_at=utcnow() + timedelta(minutes=10))

    # The job runs every few minutes; an access token about to expire is no reason to refresh.
    for _ in range(3):
        assert await refresh_tokens(portal.sessions, portal.connector_for) == 0
    assert portal.refreshes() == 0

    # A call that meets expired_token refreshes once, and the new pair and its date are saved.
    portal.box.control("POST", "/_sandbox/oauth/expire")
    before = await portal.credentials()
    connector = await portal.connector_for(await portal.record())
    assert (await connector.check()).account_id
    assert portal.refreshes() == 1
    after = await portal.credentials()
    assert after["refresh_token"] != before["refresh_token"]
    record = await portal.record()
    assert datetime.fromisoformat(record.settings[ROTATED_AT]) > rotated + timedelta(hours=23)


@pytest.mark.parametrize("rotated_days_ago", [None, 31])
async def test_bitrix24_keep_alive_renews_an_idle_refresh_token_once(
    portal: OAuthPortal, rotated_days_ago: int | None
) -> None:
    rotated = None if rotated_days_ago is None else utcnow() - timedelta(days=rotated_days_ago)
    await portal.set(rotated_at=rotated, expires_at=utcnow() - timedelta(days=2))
    started = utcnow()

    assert await refresh_tokens(portal.sessions, portal.connector_for) == 1
    assert await refresh_tokens(portal.sessions, portal.connector_for) == 0  # rotated now: nothing due
    assert portal.refreshes() == 1

    record = await portal.record()
    renewed = datetime.fromisoformat(record.settings[ROTATED_AT])
    assert renewed >= started
    async with portal.sessions() as session:
        status = await connection_status(session, record)
    assert status.refresh_token_lapses_at == renewed + timedelta(days=180)
    assert status.token_warning is None


async def test_the_next_refresh_goes_to_the_server_endpoint_of_the_token_answer(portal: OAuthPortal) -> None:
    port = portal.box.url.rsplit(":", 1)[1]
    moved = f"http://localhost:{port}/b24oauth"
    portal.box.control("POST", "/_sandbox/oauth/server", {"server_endpoint": f"{moved}/rest/"})
    await portal.set(rotated_at=None, expires_at=utcnow())

    assert await refresh_tokens(portal.sessions, portal.connector_for) == 1  # at the configured server
    stored = await portal.credentials()
    assert stored["oauth_server_url"] == moved
    # A connector built from what is stored (a restarted process) refreshes there.
    record = await portal.record()
    rebuilt = factory.build_connector(
        record.crm, record.base_url, stored, dict(record.settings), token_saver=_ignore
    )
    try:
        assert rebuilt.transport.oauth is not None  # type: ignore[attr-defined]
        assert rebuilt.transport.oauth.oauth_server == moved  # type: ignore[attr-defined]
    finally:
        await rebuilt.aclose()
    portal.box.control("POST", "/_sandbox/oauth/expire")
    connector = await portal.connector_for(record)
    await connector.check()
    assert portal.box.control("GET", "/_sandbox/rename")["token_requests"] == [
        f"127.0.0.1:{port}/oauth/token/",
        f"localhost:{port}/b24oauth/oauth/token/",
    ]


async def _ignore(tokens: Any) -> None:
    return None


@pytest.mark.parametrize(("days_ago", "warning"), [(100, None), (170, "lapses on"), (181, "lapsed on")])
async def test_refresh_token_lapse_is_shown_with_a_warning_before_it_comes(
    portal: OAuthPortal, days_ago: int, warning: str | None
) -> None:
    rotated = utcnow() - timedelta(days=days_ago)
    await portal.set(rotated_at=rotated, expires_at=utcnow() - timedelta(days=1))
    lapses = rotated + timedelta(days=180)

    with serve_asgi(create_app(portal.settings)) as url:
        async with web.async_client(base_url=url, timeout=30) as client:
            answer = await client.get(
                f"/api/connections/{NAME}/status", headers={"Authorization": "Bearer test-token-1234567890"}
            )
            status = answer.json()
            login = await client.post("/login", data={"token": "test-token-1234567890", "next": "/"})
            assert login.status_code == 303
            page = (await client.get("/")).text

    assert datetime.fromisoformat(status["refresh_token_lapses_at"]) == lapses
    if warning is None:
        assert status["token_warning"] is None
        assert 'data-warning="refresh-token"' not in page
    else:
        assert warning in status["token_warning"] and "re-authorize" in status["token_warning"]
        assert 'data-warning="refresh-token"' in page and status["token_warning"] in page
    assert 'data-metric="refresh-token-lapses"' in page
