"""Webhook upkeep: our webhook stays registered (and enabled) in every CRM where provisioning
registered it. A funnels job: provisioning is what put the webhook there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service
from app.connections.models import Connection
from app.connections.repository import active_connections
from app.db import utcnow
from app.funnels.models import Funnel
from connectors.base import CRMConnector, CRMError
from connectors.descriptor import descriptor_for

ConnectorFor = Callable[[Connection], Awaitable[CRMConnector]]


async def check_webhooks(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, connector_for: ConnectorFor
) -> int:
    """Re-register our webhook where the CRM lost or disabled it; record the outcome on the
    connection (shown by its status). Only for provisioned connections the CRM lets us manage."""
    fixed = 0
    async with sessions() as session:
        records = await active_connections(session)
    for record in records:
        connector = await connector_for(record)
        if not connector.capabilities.webhook_registration_api or not await _provisioned(sessions, record.id):
            continue
        url = service.webhook_url(settings, record, reveal_secret=True)
        events = descriptor_for(record.crm).events_to_subscribe(through_api=True)
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
