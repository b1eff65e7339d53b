"""The connections the webhook receiver has looked up, kept between deliveries.

Looking a connection up for every delivery (a session, a SELECT, decrypting its credentials) cost
each delivery a database round trip before its commit (bench/README.md, issue #14). Here a delivery is checked
against the row as it was when last read, and that is never trusted on its own:

- an accepted delivery is stored only if what its check read from the row is unchanged: the
  group commit reads the stamps of its deliveries' connections in the transaction that inserts them
  (`current_stamps`) and hands a delivery whose stamp changed back as `StaleConnection`, so the
  receiver checks it again against the row as it is now;
- a refusal is never made on a kept row: the receiver reads the row again and checks once more.

So a credential rotated, a connection renamed or deleted, by this process or another (the CLI, a
second worker), takes effect for the very next delivery, as it did with a lookup per delivery.
Correctness does not rest on invalidation, so no path that changes a connection has to remember to
drop it; the receiver drops a kept row only where it knows its copy is behind, to spare a check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service as connections
from app.connections.models import Connection
from connectors.descriptor import descriptor_for


@dataclass(frozen=True)
class ConnectionStamp:
    """What the receiver's decision depends on: the row's name, CRM, credentials, and the account's
    address and id it compares with a body's claims. Any change to these makes a kept row stale.
    Other settings are left out on purpose: jobs write them all the time (the webhook check's state,
    token dates), and a stamp that moved with them sent deliveries round again and again (a burst
    right after start-up ran out of checks)."""

    name: str
    crm: str
    credentials_encrypted: str
    identity: tuple[str | None, ...]

    @classmethod
    def of(
        cls, name: str, crm: str, credentials_encrypted: str, settings: dict[str, Any] | None
    ) -> ConnectionStamp:
        descriptor = descriptor_for(crm)
        values = settings or {}
        identity = tuple(
            None if values.get(key) is None else str(values[key])
            for key in (descriptor.domain_setting, descriptor.account_id_setting)
        )
        return cls(name, crm, credentials_encrypted, identity)

    @classmethod
    def of_record(cls, record: Connection) -> ConnectionStamp:
        return cls.of(record.name, record.crm, record.credentials_encrypted, record.settings)


class StaleConnection(Exception):
    """The connection changed after the delivery was checked against it: check it again."""


@dataclass(frozen=True)
class KnownConnection:
    """A connection row as read (detached; never changed here), its decrypted credentials, and
    whether it was read for this delivery (`fresh`) or kept from an earlier one."""

    record: Connection
    credentials: dict[str, Any]
    stamp: ConnectionStamp
    fresh: bool


class KnownConnections:
    """Rows by connection name, for one session factory (one database): see `known_connections`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._rows: dict[str, KnownConnection] = {}

    async def get(self, settings: Settings, name: str, *, fresh: bool) -> KnownConnection | None:
        """The named connection: the kept row unless `fresh`, else read now (and kept). None when no
        connection has the name; a missing name is not kept, it costs a read each time, as before."""
        kept = self._rows.get(name)
        if kept is not None and not fresh:
            return kept
        async with self._sessions() as session:
            try:
                record: Connection = await connections.get_connection(session, name)
            except connections.ConnectionNotFound:
                self._rows.pop(name, None)
                return None
        known = KnownConnection(
            record, connections.credentials(settings, record), ConnectionStamp.of_record(record), fresh=True
        )
        # Kept as not fresh: the next delivery must not take it for a row read for it.
        self._rows[name] = replace(known, fresh=False)
        return known

    def forget(self, name: str) -> None:
        """Read the row again for the next delivery: this one changed something in it that the stamp
        does not cover (the webhook token seen), or the kept copy is known to be behind."""
        self._rows.pop(name, None)


async def current_stamps(session: AsyncSession, connection_ids: Iterable[int]) -> dict[int, ConnectionStamp]:
    """The stamps of these connections as the group's session reads them (a deleted one is absent).
    Read without a row lock: the health facts jobs write to the same rows must not hold up ingest. A
    change committed between this read and the group's commit is ordered after the group's
    deliveries, as if they had arrived a moment earlier; the lookup per delivery this replaces had
    the same window, only wider (from the lookup to the commit)."""
    ids = sorted(set(connection_ids))
    if not ids:
        return {}
    query = select(
        Connection.id, Connection.name, Connection.crm, Connection.credentials_encrypted, Connection.settings
    ).where(Connection.id.in_(ids))
    rows = await session.execute(query)
    return {
        row.id: ConnectionStamp.of(row.name, row.crm, row.credentials_encrypted, row.settings) for row in rows
    }


_known: WeakKeyDictionary[async_sessionmaker[AsyncSession], KnownConnections] = WeakKeyDictionary()


def known_connections(sessions: async_sessionmaker[AsyncSession]) -> KnownConnections:
    """The kept rows of this session factory (created on first use)."""
    current = _known.get(sessions)
    if current is None:
        current = _known[sessions] = KnownConnections(sessions)
    return current
