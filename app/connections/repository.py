"""Database reads of connections that the periodic jobs need (the API's are in service.py)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import Connection, ConnectionSwitch


async def active_connections(session: AsyncSession) -> list[Connection]:
    """Connections the jobs work on: every one not paused."""
    return list(await session.scalars(select(Connection).where(Connection.status == ConnectionSwitch.ACTIVE)))
