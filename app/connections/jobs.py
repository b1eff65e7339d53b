"""Connection upkeep jobs: refresh OAuth tokens before they expire; keep the CRM's webhook to us
alive (amoCRM disables a destination that failed too often)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service
from app.connections.models import Connection
from app.db import utcnow
from app.funnels.models import Funnel
from app.funnels.plan import AMOCRM_EVENTS, BITRIX24_EVENTS
from connectors.base import AuthError, CRMConnector, CRMError

log = logging.getLogger("funnelsync.connections")

ConnectorFor = Callable[[Connection], Awaitable[CRMConnector]]
REFRESH_AHEAD = timedelta(minutes=15)


async def _active(sessions: async_sessionmaker[AsyncSession]) -> list[Connection]:
    async with sessions() as session:
        return list(await session.scalars(select(Connection).where(Connection.status == "active")))


async def refresh_tokens(sessions: async_sessionmaker[AsyncSession], connector_for: ConnectorFor) -> int:
    """Refresh every OAuth connection whose access token expires within REFRESH_AHEAD."""
    refreshed = 0
    for record in await _active(sessions):
        try:
            if await (await connector_for(record)).refresh_if_expiring(REFRESH_AHEAD):
                refreshed += 1
        except AuthError as exc:  # the refresh token was revoked: a person has to re-authorize
            await _pause(sessions, record.id, f"AuthError: {exc.crm_text}")
        except CRMError as exc:
            log.warning("token refresh for %s failed, will retry: %s", record.name, exc.crm_text)
    return refreshed


async def check_webhooks(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, connector_for: ConnectorFor
) -> int:
    """Re-register our webhook where the CRM lost or disabled it; record the outcome on the
    connection (shown by its status). Only for provisioned connections the CRM lets us manage."""
    fixed = 0
    for record in await _active(sessions):
        connector = await connector_for(record)
        if not connector.capabilities.webhook_registration_api or not await _provisioned(sessions, record.id):
            continue
        url = service.webhook_url(settings, record, reveal_secret=True)
        events = AMOCRM_EVENTS if record.crm == "amocrm" else BITRIX24_EVENTS
        try:
            hooks = [h for h in await connector.list_webhooks() if h.url == url]
            if hooks and not any(h.disabled for h in hooks):
                continue
            if hooks:
                await connector.unregister_webhook(url)
            await connector.register_webhook(url, events)
            state = {"status": "re-enabled" if hooks else "re-registered", "at": utcnow().isoformat()}
            fixed += 1
        except CRMError as exc:
            state = {"status": "failing", "error": exc.crm_text, "at": utcnow().isoformat()}
        await _note(sessions, record.id, state)
    return fixed


async def _provisioned(sessions: async_sessionmaker[AsyncSession], connection_id: int) -> bool:
    async with sessions() as session:
        found = await session.scalar(
            select(Funnel.id).where(Funnel.connection_id == connection_id, Funnel.provisioned_at.is_not(None))
        )
        return found is not None


async def _note(
    sessions: async_sessionmaker[AsyncSession], connection_id: int, state: dict[str, str]
) -> None:
    async with sessions.begin() as session:
        record = await session.get(Connection, connection_id)
        if record is not None:
            record.settings = {**record.settings, "webhook": state}


async def _pause(sessions: async_sessionmaker[AsyncSession], connection_id: int, reason: str) -> None:
    async with sessions.begin() as session:
        record = await session.get(Connection, connection_id)
        if record is not None:
            record.status, record.paused_reason = "paused", reason
