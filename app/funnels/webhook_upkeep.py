"""Webhook upkeep: our webhook stays registered (and enabled) in every CRM where provisioning
registered it. A funnels job: provisioning is what put the webhook there.

Where the webhook can only be registered by hand (a Bitrix24 inbound webhook), the receipt record
says whether it was: the first event carrying the connection's current application token is noted
on the connection (a keyed fingerprint of the token, never the token), and the plan then shows the
webhook as in place instead of asking for it again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service
from app.connections.models import Connection
from app.connections.repository import active_connections
from app.db import utcnow
from app.funnels.models import Funnel
from app.security import derived_key, fingerprint
from connectors.base import CRMConnector, CRMError
from connectors.descriptor import BodyToken, descriptor_for

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


# Connection.settings key of the receipt record: {"token": fingerprint, "at": ISO time}.
WEBHOOK_SEEN = "webhook_seen"


def _token_print(
    settings: Settings, record: Connection, credentials: dict[str, Any] | None = None
) -> str | None:
    """The keyed fingerprint of the token the connection's events must carry; None for a CRM whose
    events carry none (the secret is in our URL) or a connection without one stored yet.
    `credentials`: the record's, when the caller has decrypted them already."""
    auth = descriptor_for(record.crm).webhook_auth
    if not isinstance(auth, BodyToken):
        return None
    values = service.credentials(settings, record) if credentials is None else credentials
    token = values.get(auth.credential)
    return fingerprint(derived_key(settings, "webhook token"), str(token)) if token else None


async def note_webhook_seen(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    record: Connection,
    credentials: dict[str, Any] | None = None,
) -> bool:
    """Record that an event carrying the connection's current token arrived (its token already
    matched). Written once per token, so steady traffic costs no write. True when `record` did not
    show it yet and the row was read (and written if need be): a copy of `record` kept by the
    caller is then behind. `credentials`: the record's, decrypted (the receiver has them already;
    decrypting them again for every delivery is work on its hot path)."""
    token = _token_print(settings, record, credentials)
    seen: dict[str, Any] = record.settings.get(WEBHOOK_SEEN) or {}
    if token is None or seen.get("token") == token:
        return False
    async with sessions.begin() as session:
        current = await session.get(Connection, record.id, with_for_update=True)
        if current is not None and (current.settings.get(WEBHOOK_SEEN) or {}).get("token") != token:
            current.settings = {
                **current.settings,
                WEBHOOK_SEEN: {"token": token, "at": utcnow().isoformat()},
            }
    return True


def webhook_seen_at(settings: Settings, record: Connection) -> datetime | None:
    """When the first event carrying the connection's current token arrived; None when none has
    (or the token changed since: the CRM's hook must then be updated by hand first)."""
    seen: dict[str, Any] = record.settings.get(WEBHOOK_SEEN) or {}
    token = _token_print(settings, record)
    if token is None or seen.get("token") != token:
        return None
    return datetime.fromisoformat(seen["at"])
