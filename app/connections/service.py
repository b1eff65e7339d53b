"""Connections: create, read, decrypt credentials, persist refreshed tokens.

Credentials are one JSON document per connection, encrypted with Fernet before they reach the
database. Nothing in this module logs or returns them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.connections.models import Connection, ConnectionSwitch
from app.connections.schemas import ConnectionOut
from app.errors import NotFound
from app.security import decrypt, encrypt
from connectors.descriptor import ConnectionInput, NewConnection, descriptor_for
from connectors.http import origin


class ConnectionExists(ValueError):
    pass


class CRMAddressRefused(ValueError):
    """A CRM URL that points into a private, loopback, link-local or other non-global network."""


# URLs in a connection's input that FunnelSync never calls (the CRM redirects a browser there).
_NOT_CALLED = frozenset({"redirect_uri"})
ALLOW_PRIVATE_HINT = "set FUNNELSYNC_ALLOW_PRIVATE_CRM=true to allow a CRM on a private network"


class ConnectionNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"no connection named {name!r}; `funnelsync connections list` shows them")
        self.name = name


def build_record(
    settings: Settings, data: ConnectionInput, oauth_tokens: dict[str, Any] | None
) -> Connection:
    """A new Connection row (not yet added) from validated input. `oauth_tokens` holds the tokens an
    authorization code in the input was exchanged for (ConnectionInput.exchange_authorization)."""
    new = data.new_connection(oauth_tokens)
    record_settings: dict[str, Any] = {}
    if data.supervisor_id:
        record_settings["supervisor_id"] = data.supervisor_id
    record_settings.update(new.settings)
    record = Connection(
        name=data.name, crm=data.crm, base_url=_stored_base_url(data.crm, new), settings=record_settings
    )
    store_credentials(settings, record, new.credentials)
    return record


def _stored_base_url(crm: str, new: NewConnection) -> str:
    """What the plain base_url column holds: for a CRM whose base URL is a credential (a Bitrix24
    inbound webhook) only its origin; the full URL lives in the encrypted credentials, where the
    connector reads it from."""
    if descriptor_for(crm).base_url_is_secret and isinstance(new.credentials.get("webhook_url"), str):
        return origin(new.base_url)
    return new.base_url


def _http_urls(values: Iterable[tuple[str, object]]) -> list[str]:
    return [
        str(value)
        for key, value in values
        if key not in _NOT_CALLED and isinstance(value, str) and urlsplit(value).scheme in ("http", "https")
    ]


def input_urls(data: ConnectionInput) -> list[str]:
    """Every address a new connection's input would have FunnelSync call (with the credentials)."""
    return _http_urls(data.model_dump().items())


def record_urls(settings: Settings, record: Connection) -> list[str]:
    """Every address a stored connection's connector calls: its base URL, a Bitrix24 inbound webhook
    URL, an OAuth server."""
    return [record.base_url, *_http_urls(credentials(settings, record).items())]


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return ip.is_global and not ip.is_multicast


async def _addresses(host: str, port: int) -> list[str]:
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise CRMAddressRefused(f"the CRM host {host!r} cannot be resolved ({exc}); check the URL") from exc
    return [str(info[4][0]) for info in found]


async def refuse_private_urls(settings: Settings, urls: Iterable[str]) -> None:
    """Raise CRMAddressRefused unless every URL's host resolves (now) only to global addresses: the
    credentials go wherever these point. A DNS name counts by what it resolves to."""
    if settings.allow_private_crm:
        return
    for url in urls:
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise CRMAddressRefused(f"{url!r} has an invalid port") from exc
        for address in await _addresses(host, port):
            if not _is_public(address):
                raise CRMAddressRefused(
                    f"the CRM host {host!r} is at {address}, a private, loopback or otherwise "
                    f"non-public address; {ALLOW_PRIVATE_HINT}"
                )


async def add_connection(session: AsyncSession, record: Connection) -> Connection:
    if await session.scalar(select(Connection.id).where(Connection.name == record.name)) is not None:
        raise ConnectionExists(f"a connection named {record.name!r} already exists")
    session.add(record)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent add of the same name
        raise ConnectionExists(f"a connection named {record.name!r} already exists") from exc
    return record


async def list_connections(session: AsyncSession) -> list[Connection]:
    return list(await session.scalars(select(Connection).order_by(Connection.name)))


async def get_connection(session: AsyncSession, name: str) -> Connection:
    record = await session.scalar(select(Connection).where(Connection.name == name))
    if record is None:
        raise ConnectionNotFound(name)
    return record


def credentials(settings: Settings, record: Connection) -> dict[str, Any]:
    return dict(json.loads(decrypt(settings, record.credentials_encrypted)))


def store_credentials(settings: Settings, record: Connection, values: dict[str, Any]) -> None:
    record.credentials_encrypted = encrypt(settings, json.dumps(values))
    # When the access token runs out is not a secret, and the overview shows it without decrypting.
    if values.get("expires_at"):
        record.settings = {**(record.settings or {}), "token_expires_at": str(values["expires_at"])}


def webhook_url(settings: Settings, record: Connection, *, reveal_secret: bool) -> str:
    url = f"{settings.public_url.rstrip('/')}/webhooks/{record.crm}/{record.name}"
    if not descriptor_for(record.crm).webhook_secret_in_url:
        return url
    secret = credentials(settings, record)["webhook_secret"] if reveal_secret else "***"
    return f"{url}/{secret}"


def to_out(settings: Settings, record: Connection) -> ConnectionOut:
    return ConnectionOut(
        name=record.name,
        crm=record.crm,
        base_url=_without_secret_path(record),
        status=record.status,
        paused_reason=record.paused_reason,
        auth=credentials(settings, record)["auth"],
        settings=dict(record.settings),
        webhook_url=webhook_url(settings, record, reveal_secret=False),
        created_at=record.created_at,
    )


def _without_secret_path(record: Connection) -> str:
    """A Bitrix24 inbound webhook URL is itself a credential: show only its portal."""
    if descriptor_for(record.crm).base_url_is_secret:
        parts = urlsplit(record.base_url)
        return f"{parts.scheme}://{parts.netloc}"
    return record.base_url


async def resume_connection(session: AsyncSession, name: str) -> Connection:
    """Let a paused connection's queue run again (after fixing its credentials or a CRM block)."""
    record = await get_connection(session, name)
    record.status = ConnectionSwitch.ACTIVE
    record.paused_reason = None
    return record
