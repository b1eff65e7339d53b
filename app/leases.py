"""Leases: at most one holder per key across every process sharing the database.

Used so that one worker at a time talks to one CRM account (its rate limit holds across processes)
and one processor at a time handles one connection's inbox (events stay in arrival order). A lease
expires, so a process killed while holding one blocks its key only until then; on the same host a
holder that no longer runs is replaced at once.
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


def _host_identity() -> str:
    """The host name, and on Linux the pid namespace: containers sharing a host name (host network)
    each number their processes, so a pid means something only within its namespace."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}@{namespace}"


HOST_ID = _host_identity()
# Identifies this process in lease rows (host, pid and a random part for restarts).
PROCESS_ID = f"{HOST_ID}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
        current = await session.scalar(select(Lease.holder).where(Lease.key == key))
        if current is not None:
            if not holder_is_dead(current):
                return False
            # Its holder was killed on this host (a crashed `worker --once`, say): no need to wait
            # out the TTL. Conditional on the same holder, so two takers cannot both win.
            taken = await session.execute(
                update(Lease)
                .where(Lease.key == key, Lease.holder == current)
                .values(holder=holder, expires_at=now + ttl)
            )
            return bool(taken.rowcount)  # type: ignore[attr-defined]
    try:
        async with sessions.begin() as session:
            session.add(Lease(key=key, holder=holder, expires_at=now + ttl))
    except IntegrityError:  # another process inserted it first
        return False
    return True


def holder_is_dead(holder: str) -> bool:
    """True when `holder` names a process on this host that no longer runs. Anything else (another
    host, a process we may not signal, a malformed id) counts as alive: the lease then simply
    expires. A reused pid makes a dead holder look alive, which is the safe way to be wrong."""
    host, _, rest = holder.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != HOST_ID or not pid_text.isdigit() or holder == PROCESS_ID:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # this pid, another random part: an earlier process that had our pid
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def release(sessions: async_sessionmaker[AsyncSession], key: str, holder: str = PROCESS_ID) -> None:
    async with sessions.begin() as session:
        await session.execute(delete(Lease).where(Lease.key == key, Lease.holder == holder))
