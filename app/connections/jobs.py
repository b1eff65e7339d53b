"""Connection upkeep jobs: keep OAuth refresh tokens alive (amoCRM: refresh ahead of expiry;
Bitrix24: a rare keep-alive only); keep the CRM's webhook to us alive (amoCRM disables a destination
that failed too often)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections.connector import refresh_token_rotated_at
from app.connections.models import Connection, ConnectionSwitch
from app.connections.repository import active_connections
from app.db import utcnow
from connectors.base import AuthError, CRMConnector, CRMError
from connectors.descriptor import descriptor_for

log = logging.getLogger("funnelsync.connections")

ConnectorFor = Callable[[Connection], Awaitable[CRMConnector]]
# amoCRM: access tokens live 24 h; refreshing 15 minutes ahead rotates the pair about once a day,
# which also keeps the 3-month refresh token alive (docs/crm/amocrm.md §2).
REFRESH_AHEAD = timedelta(minutes=15)
# Bitrix24: calls refresh on expired_token themselves; refreshing on a schedule (hourly, daily) is
# what the docs warn can get the app blocked (DOCS settings/oauth/auto-renewal.md). The job only
# renews a refresh token that was not rotated for this long, far inside its 180-day life (the
# CRM's descriptor says so: its refresh_keepalive).
# "Refresh if the access token expires within ten years": refresh now, whatever its expiry.
_NOW = timedelta(days=3650)


async def _active(sessions: async_sessionmaker[AsyncSession]) -> list[Connection]:
    async with sessions() as session:
        return await active_connections(session)


def _refresh_window(record: Connection, now: datetime) -> timedelta | None:
    """The window to refresh `record`'s tokens in now, or None when it needs nothing."""
    keepalive = descriptor_for(record.crm).refresh_keepalive
    if keepalive is None:
        return REFRESH_AHEAD
    rotated = refresh_token_rotated_at(record)
    # Unknown (a connection made with a pasted refresh token): renewing once records the date.
    # Inbound-webhook connections have no tokens: their connector answers False without a request.
    if rotated is None or now - rotated >= keepalive:
        return _NOW
    return None


async def refresh_tokens(
    sessions: async_sessionmaker[AsyncSession], connector_for: ConnectorFor, now: datetime | None = None
) -> int:
    """amoCRM: refresh tokens that expire within REFRESH_AHEAD. Bitrix24: a keep-alive refresh
    when the refresh token was not rotated for its keep-alive period. Returns how many refreshed."""
    refreshed = 0
    now = now or utcnow()
    for record in await _active(sessions):
        window = _refresh_window(record, now)
        if window is None:
            continue
        try:
            if await (await connector_for(record)).refresh_if_expiring(window):
                refreshed += 1
        except AuthError as exc:  # the refresh token was revoked: a person has to re-authorize
            await _pause(sessions, record.id, f"AuthError: {exc.crm_text}")
        except CRMError as exc:
            log.warning("token refresh for %s failed, will retry: %s", record.name, exc.crm_text)
    return refreshed


async def _pause(sessions: async_sessionmaker[AsyncSession], connection_id: int, reason: str) -> None:
    async with sessions.begin() as session:
        record = await session.get(Connection, connection_id)
        if record is not None:
            record.status, record.paused_reason = ConnectionSwitch.PAUSED, reason
