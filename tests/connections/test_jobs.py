"""Connection upkeep: OAuth tokens refreshed ahead of expiry and saved; a webhook the CRM lost is
registered again. amoCRM sandbox over real HTTP, both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service
from app.connections.connector import open_connector
from app.connections.jobs import refresh_tokens
from app.connections.models import Connection
from app.db import utcnow
from app.funnels.webhook_upkeep import check_webhooks
from app.status.connection import connection_status
from connectors.amocrm.descriptor import AmoCRMConnectionCreate
from connectors.base import CRMConnector
from tests.support.crm import CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions


@pytest.fixture
def amo() -> Iterator[CRMSandbox]:
    with crm_sandbox("amocrm") as box:
        yield box


@pytest.fixture
async def oauth_connection(
    amo: CRMSandbox, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Settings, async_sessionmaker[AsyncSession], Connection]]:
    """An amoCRM connection made the OAuth way: a user allows access, FunnelSync trades the code."""
    settings = settings_for(tmp_path, database_url)
    grant = amo.box.control("POST", "/_sandbox/oauth/code")
    data = AmoCRMConnectionCreate(
        name="amo",
        crm="amocrm",
        subdomain=amo.box.config.subdomain,
        base_url=amo.url,
        client_id=grant["client_id"],
        client_secret=SecretStr(amo.box.config.client_secret),
        redirect_uri=grant["redirect_uri"],
        auth_code=SecretStr(grant["code"]),
    )
    record = service.build_record(settings, data, await data.exchange_authorization())
    async with open_sessions(database_url) as sessions:
        async with sessions.begin() as session:
            session.add(record)
        yield settings, sessions, record


async def stored(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> dict[str, str]:
    async with sessions() as session:
        return service.credentials(settings, await service.get_connection(session, "amo"))


async def test_tokens_are_refreshed_ahead_of_expiry_and_saved(
    oauth_connection: tuple[Settings, async_sessionmaker[AsyncSession], Connection],
) -> None:
    settings, sessions, record = oauth_connection
    before = await stored(sessions, settings)
    connectors: list[CRMConnector] = []

    async def connector_for(current: Connection) -> CRMConnector:
        connectors.append(await open_connector(sessions, settings, current))
        return connectors[-1]

    try:
        assert await refresh_tokens(sessions, connector_for) == 0  # 24 hours left: nothing to do
        # Ten minutes left: the job refreshes, and the rotated pair is in the database.
        async with sessions.begin() as session:
            current = await service.get_connection(session, "amo")
            values = service.credentials(settings, current)
            values["expires_at"] = (utcnow() + timedelta(minutes=10)).isoformat()
            service.store_credentials(settings, current, values)
        assert await refresh_tokens(sessions, connector_for) == 1
    finally:
        for connector in connectors:
            await connector.aclose()
    after = await stored(sessions, settings)
    assert after["refresh_token"] != before["refresh_token"]
    # The new expiry is also kept in the clear for the overview, which never decrypts credentials.
    async with sessions() as session:
        health = await connection_status(session, await service.get_connection(session, "amo"))
    assert health.token_expires_at == datetime.fromisoformat(after["expires_at"])
    assert health.token_expires_at > utcnow() + timedelta(hours=1)
    assert after["access_token"] != before["access_token"]
    connector = await open_connector(sessions, settings, record)
    try:
        assert (await connector.check()).account_id  # the saved tokens work
    finally:
        await connector.aclose()


async def test_a_lost_webhook_is_registered_again(
    amo: CRMSandbox, oauth_connection: tuple[Settings, async_sessionmaker[AsyncSession], Connection]
) -> None:
    from app.funnels.service import provision
    from funnel_templates.loader import library

    settings, sessions, record = oauth_connection
    connector = await open_connector(sessions, settings, record)
    try:
        assert (
            await provision(
                sessions, settings, record, connector, library()["general.typical"], dry_run=False
            )
        ).applied
        url = service.webhook_url(settings, record, reveal_secret=True)
        assert [h.url for h in await connector.list_webhooks()] == [url]
        await connector.unregister_webhook(url)  # someone removed it in the CRM

        async def connector_for(current: Connection) -> CRMConnector:
            return connector

        assert await check_webhooks(sessions, settings, connector_for) == 1
        assert [h.url for h in await connector.list_webhooks()] == [url]
        assert await check_webhooks(sessions, settings, connector_for) == 0  # healthy: nothing to do
    finally:
        await connector.aclose()
    async with sessions() as session:
        note = (await service.get_connection(session, "amo")).settings["webhook"]
    assert note["status"] == "re-registered"
