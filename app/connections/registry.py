"""One connector per connection per process, so its rate limiter and token state are shared by
every job in the process; closed when the service stops."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections.connector import open_connector
from app.connections.models import Connection
from connectors.base import CRMConnector


class ConnectorRegistry:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings
        self._connectors: dict[int, tuple[str, CRMConnector]] = {}
        self._paused: set[int] = set()
        self._lock = asyncio.Lock()

    async def get(self, record: Connection) -> CRMConnector:
        connector = await self._get(record)
        if record.status != "active":
            self._paused.add(record.id)
        elif record.id in self._paused:
            self._paused.discard(record.id)
            connector.connection_resumed()  # an operator resumed it since this process last looked
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
