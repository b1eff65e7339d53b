"""Leases: a live holder keeps its key until the lease expires; a holder that no longer runs on this
host is replaced at once, so a crashed `worker --once` does not block its restart for 5 minutes."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import select

from app.db import utcnow
from app.leases import HOST_ID, PROCESS_ID, Lease, acquire, holder_is_dead
from tests.support.db import open_sessions

TTL = timedelta(minutes=5)


def dead_pid() -> int:
    """The pid of a process that has run and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_who_counts_as_dead() -> None:
    assert holder_is_dead(f"{HOST_ID}:{dead_pid()}:aaaa0000")
    assert holder_is_dead(f"{HOST_ID}:{os.getpid()}:another1")  # an earlier process with our pid
    assert not holder_is_dead(PROCESS_ID)
    assert not holder_is_dead(f"{HOST_ID}:{os.getppid()}:parent00")  # alive
    assert not holder_is_dead(f"other-host@1:{dead_pid()}:aaaa0000")  # cannot tell: assume alive
    assert not holder_is_dead("malformed")


async def test_a_dead_holders_lease_is_taken_over_a_live_ones_is_not(database_url: str) -> None:
    dead = f"{HOST_ID}:{dead_pid()}:deadbeef"
    alive = f"{HOST_ID}:{os.getppid()}:parent00"
    async with open_sessions(database_url) as sessions:
        async with sessions.begin() as session:
            session.add(Lease(key="outbox:1", holder=dead, expires_at=utcnow() + TTL))
            session.add(Lease(key="outbox:2", holder=alive, expires_at=utcnow() + TTL))

        assert await acquire(sessions, "outbox:1", TTL)
        assert not await acquire(sessions, "outbox:2", TTL)
        # A second taker loses to the first: the takeover is conditional on the old holder.
        assert not await acquire(sessions, "outbox:1", TTL, holder=f"{HOST_ID}:{os.getppid()}:rival000")

        async with sessions() as session:
            holders = {key: holder for key, holder in await session.execute(select(Lease.key, Lease.holder))}
    assert holders == {"outbox:1": PROCESS_ID, "outbox:2": alive}
