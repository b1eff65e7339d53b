"""Channel accounts per connection: set, list, remove, pause and resume them, and open the adapter
for one. Secrets are encrypted with app.security.encrypt before they reach the database and are
never returned or logged: what callers get back says only which secrets are set."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.connections import service as connections
from app.connections.models import Connection
from app.errors import NotFound
from app.messages.models import ChannelAccount
from app.messages.statuses import MESSAGE_CHANNELS, ChannelAccountStatus
from app.security import decrypt, encrypt
from connectors.channels.accounts import build_channel, called_urls, validate_account
from connectors.channels.base import Channel


class AccountNotFound(NotFound):
    pass


class ChannelAddressRefused(ValueError):
    """The provider's address is not public and FUNNELSYNC_ALLOW_PRIVATE_CRM is off."""


def check_channel_name(channel: str) -> str:
    if channel not in MESSAGE_CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; channels are {', '.join(MESSAGE_CHANNELS)}")
    return channel


async def refuse_private_address(settings: Settings, channel: str, config: Mapping[str, Any]) -> None:
    """Like a CRM's base URL: the secrets go where these point, so a private address is refused
    unless FUNNELSYNC_ALLOW_PRIVATE_CRM is on (the sandboxes run on 127.0.0.1)."""
    try:
        await connections.refuse_private_urls(settings, called_urls(channel, config))
    except connections.CRMAddressRefused as exc:
        raise ChannelAddressRefused(f"{channel}: " + str(exc).replace("the CRM host", "the host")) from exc


def stored_secrets(settings: Settings, account: ChannelAccount) -> dict[str, str]:
    return dict(json.loads(decrypt(settings, account.secrets_encrypted)))


async def set_account(
    session: AsyncSession,
    settings: Settings,
    record: Connection,
    channel: str,
    config: Mapping[str, Any],
    secrets: Mapping[str, Any],
) -> ChannelAccount:
    """Create or replace the connection's account for `channel`. Secrets left out of an update keep
    their stored values (changing the SMTP host needs no password again). ValueError/ValidationError
    and ChannelAddressRefused change nothing. A replaced account is active again."""
    check_channel_name(channel)
    account = await find_account(session, record.id, channel)
    merged_secrets = {**(stored_secrets(settings, account) if account else {}), **secrets}
    checked_config, checked_secrets = validate_account(channel, config, merged_secrets)
    await refuse_private_address(settings, channel, checked_config)
    if account is None:
        account = ChannelAccount(connection_id=record.id, channel=channel)
        session.add(account)
    account.config = checked_config
    account.secrets_encrypted = encrypt(settings, json.dumps(checked_secrets))
    account.status = ChannelAccountStatus.ACTIVE
    account.paused_reason = None
    await session.flush()
    return account


async def find_account(session: AsyncSession, connection_id: int, channel: str) -> ChannelAccount | None:
    return await session.scalar(
        select(ChannelAccount).where(
            ChannelAccount.connection_id == connection_id, ChannelAccount.channel == channel
        )
    )


async def get_account(session: AsyncSession, record: Connection, channel: str) -> ChannelAccount:
    check_channel_name(channel)
    account = await find_account(session, record.id, channel)
    if account is None:
        raise AccountNotFound(
            f"connection {record.name!r} has no {channel} account; "
            f"`funnelsync channels set {record.name} {channel} ...` adds one"
        )
    return account


async def list_accounts(session: AsyncSession, connection_id: int) -> list[ChannelAccount]:
    return list(
        await session.scalars(
            select(ChannelAccount)
            .where(ChannelAccount.connection_id == connection_id)
            .order_by(ChannelAccount.channel)
        )
    )


async def remove_account(session: AsyncSession, record: Connection, channel: str) -> None:
    """Remove the account; its queued messages wait until an account for the channel is set again."""
    await session.delete(await get_account(session, record, channel))
    await session.flush()


def pause_account(account: ChannelAccount, reason: str) -> None:
    account.status = ChannelAccountStatus.PAUSED
    account.paused_reason = reason


async def resume_account(session: AsyncSession, record: Connection, channel: str) -> ChannelAccount:
    """Let a paused account send again (after fixing the credentials or topping up): its messages
    were left queued and go at the next delivery run."""
    account = await get_account(session, record, channel)
    account.status = ChannelAccountStatus.ACTIVE
    account.paused_reason = None
    return account


def describe(account: ChannelAccount, settings: Settings) -> dict[str, Any]:
    """The account as shown to people: its settings, and "set" for each stored secret."""
    return {
        "channel": account.channel,
        "config": dict(account.config or {}),
        "secrets": {key: "set" for key in stored_secrets(settings, account)},
        "status": str(account.status),
        "paused_reason": account.paused_reason,
        "updated_at": account.updated_at,
    }


async def open_channel(settings: Settings, account: ChannelAccount) -> Channel:
    """The adapter for `account` (the caller closes it with `aclose`). Async because the provider's
    address is resolved first: ChannelAddressRefused when it is not public (a DNS name may have
    moved since the account was set)."""
    config = dict(account.config or {})
    await refuse_private_address(settings, account.channel, config)
    return build_channel(account.channel, config, stored_secrets(settings, account))
