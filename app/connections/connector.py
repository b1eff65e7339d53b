"""Open a connector for a stored connection, persisting refreshed OAuth tokens as they rotate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service
from app.connections.models import Connection
from app.connections.schemas import AmoCRMConnectionCreate
from connectors import factory
from connectors.base import CRMConnector, TokenSet


async def open_connector(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, record: Connection
) -> CRMConnector:
    connection_id = record.id

    async def save_tokens(tokens: TokenSet) -> None:
        # Committed before the connector uses the new access token: amoCRM refresh tokens are
        # single-use, so a token pair that is used but not saved would lock the account out.
        async with sessions.begin() as session:
            current = await session.get(Connection, connection_id, with_for_update=True)
            if current is None:
                return
            values = service.credentials(settings, current)
            values.update(factory.token_set_to(tokens))
            service.store_credentials(settings, current, values)

    return factory.build_connector(
        record.crm,
        record.base_url,
        service.credentials(settings, record),
        dict(record.settings),
        token_saver=save_tokens,
    )


async def exchange_amocrm_code(data: AmoCRMConnectionCreate) -> dict[str, Any]:
    assert data.client_id and data.client_secret and data.redirect_uri and data.auth_code
    return await factory.exchange_amocrm_code(
        data.subdomain,
        data.resolved_base_url,
        data.client_id,
        data.client_secret.get_secret_value(),
        data.redirect_uri,
        data.auth_code.get_secret_value(),
    )


@asynccontextmanager
async def connected(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, name: str
) -> AsyncIterator[tuple[Connection, CRMConnector]]:
    """The named connection and a connector for it, closed afterwards. Raises ConnectionNotFound."""
    async with sessions() as session:
        record = await service.get_connection(session, name)
    connector = await open_connector(sessions, settings, record)
    try:
        yield record, connector
    finally:
        await connector.aclose()
