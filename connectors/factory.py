"""Build a connector from what a connection stores, through the CRM's descriptor (which knows its
connector's constructor), so the service never branches on the CRM."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from connectors.base import CRMConnector, TokenSaver, TokenSet
from connectors.descriptor import descriptor_for
from connectors.http import DomainSaver, RetryPolicy

__all__ = ["build_connector", "token_set_from", "token_set_to"]


def token_set_from(credentials: dict[str, Any]) -> TokenSet:
    expires = credentials.get("expires_at")
    return TokenSet(
        access_token=str(credentials.get("access_token") or ""),
        refresh_token=str(credentials.get("refresh_token") or ""),
        # Unknown expiry: treat the access token as expired so the first call refreshes it.
        expires_at=datetime.fromisoformat(expires) if expires else datetime.fromtimestamp(0, UTC),
    )


def token_set_to(tokens: TokenSet) -> dict[str, Any]:
    values = {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "expires_at": tokens.expires_at.isoformat(),
    }
    # Bitrix24: the OAuth server the token answer's server_endpoint names; the next refresh goes there.
    if tokens.extra.get("oauth_server"):
        values["oauth_server_url"] = str(tokens.extra["oauth_server"])
    return values


def account_key(crm: str, base_url: str) -> str:
    """Rate limits are per portal/account, whatever connection or process object talks to it."""
    return f"{crm}:{urlsplit(base_url).netloc or base_url}"


def build_connector(
    crm: str,
    base_url: str,
    credentials: dict[str, Any],
    settings: dict[str, Any],
    *,
    token_saver: TokenSaver | None = None,
    domain_saver: DomainSaver | None = None,
    retry: RetryPolicy | None = None,
) -> CRMConnector:
    """`domain_saver` is told (old origin, new origin) when the portal/account answered from a new
    address (renamed), so the caller records it; calls go to the new address either way."""
    return descriptor_for(crm).build_connector(
        base_url,
        credentials,
        settings,
        account_key=account_key(crm, base_url),
        token_saver=token_saver,
        domain_saver=domain_saver,
        retry=retry,
    )
