"""CRM user names per connection, for the dashboard: deals store the responsible user's id only.

Kept in memory (one directory per process, on app.state) and read again from the CRM at most every
USERS_TTL when a page needs them. Not in the database: a table would need a migration, and the
connection's JSON settings are the wrong place, since writing them touches the row, whose
`updated_at` the connector registry reads as "the operator changed or resumed this connection".

A page never fails because of names: when the CRM cannot list users (no `user` scope on Bitrix24,
not an administrator on amoCRM, down, slow) the page shows ids, and the next try waits RETRY_AFTER.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from app.config import Settings
from app.connections import service
from app.connections.models import Connection, ConnectionSwitch
from app.connections.registry import ConnectorRegistry
from app.db import utcnow
from connectors.base import CRMConnector, CRMError, CrmUser

log = logging.getLogger("funnelsync.connections")

USERS_TTL = timedelta(minutes=10)
RETRY_AFTER = timedelta(minutes=1)  # after a failed read: not on every page view
FETCH_TIMEOUT = 5.0  # seconds a page waits for the CRM's user list before it shows ids

ConnectorFor = Callable[[Connection], Awaitable[CRMConnector]]


@dataclass
class _Entry:
    users: dict[str, CrmUser] = field(default_factory=dict)
    next_read_at: datetime | None = None  # None: never read
    error: str | None = None


class UserDirectory:
    """id -> CrmUser per connection id, refreshed lazily (see the module docstring)."""

    def __init__(self, ttl: timedelta = USERS_TTL, retry_after: timedelta = RETRY_AFTER) -> None:
        self.ttl = ttl
        self.retry_after = retry_after
        self._entries: dict[int, _Entry] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def error(self, connection_id: int) -> str | None:
        entry = self._entries.get(connection_id)
        return entry.error if entry else None

    async def users(self, record: Connection, connector_for: ConnectorFor) -> dict[str, CrmUser]:
        """The connection's users, read from the CRM when the cached list is older than the TTL.
        A paused connection is not asked (the CRM refused it): whatever is cached is returned."""
        entry = self._entries.setdefault(record.id, _Entry())
        if record.status == ConnectionSwitch.PAUSED or not self._due(entry):
            return dict(entry.users)
        lock = self._locks.setdefault(record.id, asyncio.Lock())
        async with lock:
            if self._due(entry):  # another request may have read them while this one waited
                await self._read(record, connector_for, entry)
        return dict(entry.users)

    def _due(self, entry: _Entry) -> bool:
        return entry.next_read_at is None or utcnow() >= entry.next_read_at

    async def _read(self, record: Connection, connector_for: ConnectorFor, entry: _Entry) -> None:
        try:
            connector = await connector_for(record)
            listed = await asyncio.wait_for(connector.list_users(), FETCH_TIMEOUT)
        except (CRMError, TimeoutError, OSError, ValueError, KeyError) as exc:
            # ValueError, KeyError: credentials that cannot be read (a broken or foreign key, a
            # stored record missing a part); names are a nicety, never a reason for a page to fail.
            entry.error = getattr(exc, "crm_text", None) or str(exc) or type(exc).__name__
            entry.next_read_at = utcnow() + self.retry_after
            log.info("user names of %s not read: %s", record.name, entry.error)
            return
        entry.users = {u.id: u for u in listed}
        entry.error = None
        entry.next_read_at = utcnow() + self.ttl


@dataclass(frozen=True)
class UserNames:
    """What a page shows for a CRM user id: the name when known, else the id itself."""

    users: dict[str, CrmUser] = field(default_factory=dict)
    error: str | None = None  # why the names could not be read, when they could not

    def __call__(self, user_id: str | None) -> str:
        if not user_id:
            return "—"
        user = self.users.get(str(user_id))
        return user.name if user else str(user_id)

    def active(self, user_id: str | None) -> bool:
        user = self.users.get(str(user_id))
        return user.active if user else True


async def names_for(directory: UserDirectory, record: Connection, connector_for: ConnectorFor) -> UserNames:
    users = await directory.users(record, connector_for)
    return UserNames(users, directory.error(record.id) if not users else None)


def registry_connector(registry: ConnectorRegistry, settings: Settings) -> ConnectorFor:
    """The process's shared connector (its rate limiter counts these reads too). The address check
    is made here, without open_connector's side effect: a refused address pauses the connection
    there, and a page view must change nothing; the sync jobs meet the same refusal and pause it."""

    async def connector_for(record: Connection) -> CRMConnector:
        await service.refuse_private_urls(settings, service.record_urls(settings, record))
        return await registry.get(record)

    return connector_for


def directory_of(state: Any) -> UserDirectory:
    """The process's directory, kept on `app.state` (made on first use)."""
    directory = getattr(state, "user_directory", None)
    if not isinstance(directory, UserDirectory):
        directory = UserDirectory()
        state.user_directory = directory
    return directory


async def page_names(state: Any, settings: Settings, record: Connection) -> UserNames:
    """The names a dashboard page shows for `record`'s users (this process's directory, its
    connector registry)."""
    directory = directory_of(state)
    return await names_for(directory, record, registry_connector(state.connectors, settings))
