"""One connector per connection per process, so its rate limiter and token state are shared by
every job in the process; closed when the service stops."""

from __future__ import annotations

import asyncio
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections.connector import open_connector
from app.connections.models import Connection, ConnectionSwitch
from connectors.base import CRMConnector


class ConnectorRegistry:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings
        self._connectors: dict[int, tuple[str, CRMConnector]] = {}
        self._seen: dict[int, datetime] = {}  # connection id -> updated_at when last handed out
        self._lock = asyncio.Lock()

    async def get(self, record: Connection) -> CRMConnector:
        connector = await self._get(record)
        # Pausing and resuming both touch the row. A connection that is active again after any
        # change since we last looked may have been resumed (e.g. after amoCRM lifted a block that
        # this process still remembers): let the connector forget account-level refusals.
        seen = self._seen.get(record.id)
        if record.status == ConnectionSwitch.ACTIVE and seen is not None and seen != record.updated_at:
            connector.connection_resumed()
        self._seen[record.id] = record.updated_at
        return connector

    async def _get(self, record: Connection) -> CRMConnector:
        async with self._lock:
            cached = self._connectors.get(record.id)
            # Rebuilt when the stored credentials change (a user updated the connection).
            if cached is not None and cached[0] == record.credentials_encrypted:
                return cached[1]
            if cached is not None:
                await cached[1].aclose()
            connector = await open_connector(self._sessions, self._settings, record)
            self._connectors[record.id] = (record.credentials_encrypted, connector)
            return connector

    async def aclose(self) -> None:
        async with self._lock:
            for _, connector in self._connectors.values():
                await connector.aclose()
            self._connectors.clear()
