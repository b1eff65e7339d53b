"""Leases: at most one holder per key across every process sharing the database.

Used so that one worker at a time talks to one CRM account (its rate limit holds across processes)
and one processor at a time handles one connection's inbox (events stay in arrival order). A lease
expires, so a process killed while holding one blocks its key only until then.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import String, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow

# Identifies this process in lease rows (host, pid and a random part for restarts).
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease(Base):
    __tablename__ = "leases"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


async def acquire(
    sessions: async_sessionmaker[AsyncSession], key: str, ttl: timedelta, holder: str = PROCESS_ID
) -> bool:
    """Take or extend the lease on `key`; False when another live holder has it."""
    now = utcnow()
    async with sessions.begin() as session:
        taken = await session.execute(
            update(Lease)
            .where(Lease.key == key, or_(Lease.holder == holder, Lease.expires_at < now))
            .values(holder=holder, expires_at=now + ttl)
        )
        if taken.rowcount:  # type: ignore[attr-defined]
            return True
        if await session.scalar(select(Lease.key).where(Lease.key == key)) is not None:
            return False
    try:
        async with sessions.begin() as session:
            session.add(Lease(key=key, holder=holder, expires_at=now + ttl))
    except IntegrityError:  # another process inserted it first
        return False
    return True


async def release(sessions: async_sessionmaker[AsyncSession], key: str, holder: str = PROCESS_ID) -> None:
    async with sessions.begin() as session:
        await session.execute(delete(Lease).where(Lease.key == key, Lease.holder == holder))
