"""Open a connector for a stored connection, persisting refreshed OAuth tokens as they rotate and
the new address of a renamed portal/account; when a refresh token lapses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service
from app.connections.models import Connection, ConnectionSwitch
from app.db import utcnow
from connectors import factory
from connectors.base import CRMConnector, PermanentError, TokenSet
from connectors.descriptor import descriptor_for
from connectors.http import RedirectRefused, origin, with_origin

log = logging.getLogger("funnelsync.connections")

# The overview and the status warn this long before a refresh token lapses.
LAPSE_WARNING = timedelta(days=14)
# Settings keys (non-secret, readable without decrypting the credentials).
ROTATED_AT = "refresh_token_rotated_at"
PREVIOUS_DOMAINS = "previous_domains"


class AddressRefused(PermanentError):
    """FunnelSync will not call this connection: its CRM address is not public (see
    FUNNELSYNC_ALLOW_PRIVATE_CRM). A CRMError, so every caller reports it as a refusal."""


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:  # a hand-edited setting: unknown rather than a crash
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def refresh_token_rotated_at(record: Connection) -> datetime | None:
    """When the stored refresh token was issued, if FunnelSync knows. A connection whose CRM
    exchanges an authorization code on creation (amoCRM) got its first pair when it was created."""
    rotated = _parse_time((record.settings or {}).get(ROTATED_AT))
    issued_at_creation = descriptor_for(record.crm).tokens_issued_at_creation
    if rotated is None and issued_at_creation and (record.settings or {}).get("token_expires_at"):
        created = record.created_at
        rotated = created.replace(tzinfo=created.tzinfo or UTC) if created else None
    return rotated


def refresh_token_lapses_at(record: Connection) -> datetime | None:
    """When the stored refresh token stops working unless used before; None without OAuth or
    when the issue date is unknown (the keep-alive job then refreshes, which records it). How long
    a refresh token lives after it was issued (each refresh issues a new one) is the CRM's."""
    lifetime = descriptor_for(record.crm).refresh_token_lifetime
    rotated = refresh_token_rotated_at(record)
    if lifetime is None or rotated is None or not (record.settings or {}).get("token_expires_at"):
        return None
    return rotated + lifetime


def domain_of(record: Connection) -> str:
    """The account's address as the CRM names it: the Bitrix24 portal host, the amoCRM subdomain."""
    settings = record.settings or {}
    return str(settings.get(descriptor_for(record.crm).domain_setting) or urlsplit(record.base_url).netloc)


def record_domain(record: Connection, new: str, source: str) -> bool:
    """Make `new` the connection's domain (portal host / amoCRM subdomain), keeping the old one
    in settings.previous_domains with the time and what told us. False when nothing changed."""
    settings = dict(record.settings or {})
    key = descriptor_for(record.crm).domain_setting
    old = domain_of(record)
    if not new or old.lower() == new.lower():
        return False
    history = list(settings.get(PREVIOUS_DOMAINS) or [])
    if source == "webhook" and any(str(h.get("domain", "")).lower() == new.lower() for h in history):
        # An event queued before the rename and delivered after it: not a move back.
        return False
    history.append({"domain": old, "until": utcnow().isoformat(), "source": source})
    settings[key] = new
    settings[PREVIOUS_DOMAINS] = history[-20:]  # a bounded record, not a log
    record.settings = settings
    return True


def move_connection(settings: Settings, record: Connection, old: str, new: str) -> None:
    """The CRM answered from origin `new` instead of `old` (a renamed portal/account): call it
    there from now on (base_url, and a Bitrix24 inbound webhook URL) and record the move."""
    if origin(record.base_url) != old:
        return  # already moved: concurrent calls each met the redirect, the first one recorded it
    record.base_url = with_origin(record.base_url, old, new)
    values = service.credentials(settings, record)
    if isinstance(values.get("webhook_url"), str) and origin(values["webhook_url"]) == old:
        values["webhook_url"] = with_origin(values["webhook_url"], old, new)
        service.store_credentials(settings, record, values)
    domain = descriptor_for(record.crm).domain_from_host(urlsplit(new).netloc)
    if domain is not None:
        record_domain(record, domain, "api")
    else:  # a host outside the CRM's own domains: the account's name is unknown, note the host change
        history = list((record.settings or {}).get(PREVIOUS_DOMAINS) or [])
        history.append({"domain": urlsplit(old).netloc, "until": utcnow().isoformat(), "source": "api"})
        record.settings = {**(record.settings or {}), PREVIOUS_DOMAINS: history[-20:]}


async def _refuse_private_address(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, record: Connection
) -> None:
    """Resolve the connection's addresses now, before any credential is sent there (they may have
    been added with private ones allowed, or a DNS name may have moved); a refused connection is
    paused, saying why, so its queue waits instead of failing command by command."""
    try:
        await service.refuse_private_urls(settings, service.record_urls(settings, record))
    except service.CRMAddressRefused as exc:
        async with sessions.begin() as session:
            current = await session.get(Connection, record.id, with_for_update=True)
            if current is not None:
                current.status = ConnectionSwitch.PAUSED
                current.paused_reason = str(exc)
        log.warning("connection %s paused: %s", record.name, exc)
        raise AddressRefused(str(exc)) from exc


async def open_connector(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, record: Connection
) -> CRMConnector:
    """A connector for `record`; raises AddressRefused (and pauses the connection) when its CRM
    address is not public and private ones are not allowed."""
    await _refuse_private_address(sessions, settings, record)
    connection_id = record.id

    async def save_tokens(tokens: TokenSet) -> None:
        # Committed before the connector uses the new access token: amoCRM refresh tokens are
        # single-use, so a token pair that is used but not saved would lock the account out.
        async with sessions.begin() as session:
            current = await session.get(Connection, connection_id, with_for_update=True)
            if current is None:
                return
            values = service.credentials(settings, current)
            values.update(factory.token_set_to(tokens))
            service.store_credentials(settings, current, values)
            # Each refresh issues a new refresh token with a full life: when it lapses follows from this.
            current.settings = {**current.settings, ROTATED_AT: utcnow().isoformat()}

    async def save_domain(old: str, new: str) -> None:
        await refuse_private_move(settings, old, new)
        async with sessions.begin() as session:
            current = await session.get(Connection, connection_id, with_for_update=True)
            if current is not None:
                move_connection(settings, current, old, new)
        log.warning("connection %s: the CRM moved from %s to %s; recorded", record.name, old, new)

    return factory.build_connector(
        record.crm,
        record.base_url,
        service.credentials(settings, record),
        dict(record.settings),
        token_saver=save_tokens,
        domain_saver=save_domain,
        retry=settings.crm_retry,
    )


@asynccontextmanager
async def connected(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, name: str
) -> AsyncIterator[tuple[Connection, CRMConnector]]:
    """The named connection and a connector for it, closed afterwards. Raises ConnectionNotFound."""
    async with sessions() as session:
        record = await service.get_connection(session, name)
    connector = await open_connector(sessions, settings, record)
    try:
        yield record, connector
    finally:
        await connector.aclose()


async def refuse_private_move(settings: Settings, old: str, new: str) -> None:
    """A CRM that redirects to a host that is not a public address would receive the credentials
    there: refused like such an address at connect time (the connection pauses, saying why)."""
    try:
        await service.refuse_private_urls(settings, [new])
    except service.CRMAddressRefused as exc:
        raise RedirectRefused(f"{old} redirected to {new}: {exc}", crm_code="PRIVATE_REDIRECT") from exc
