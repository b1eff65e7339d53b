"""What the service needs to know about each CRM, in one record per CRM, and the registry of them.

Each CRM describes itself in its own folder (`connectors/<crm>/descriptor.py`); connectors/builtin.py
registers the built-in ones. The service looks a connection's CRM up here instead of branching on
its name, so a new CRM is its folder plus one registration line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from connectors.base import CRMConnector, DealEvent, TokenSaver
from connectors.http import DomainSaver, RatePolicy

__all__ = [
    "CRMDescriptor",
    "ConnectorBuilder",
    "UnknownCRM",
    "WebhookIdentity",
    "crm_names",
    "descriptor_for",
    "descriptors",
    "register",
    "unregister",
]


@dataclass(frozen=True)
class WebhookIdentity:
    """What a body says about its sender: portal/subdomain, member/account id, app token."""

    domain: str | None = None
    account_id: str | None = None
    application_token: str | None = None


class ConnectorBuilder(Protocol):
    """Build a connector from what a connection stores (its base URL, decrypted credentials and
    settings). `account_key` names the portal/account its rate limit is shared under."""

    def __call__(
        self,
        base_url: str,
        credentials: dict[str, Any],
        settings: Mapping[str, Any],
        *,
        account_key: str,
        token_saver: TokenSaver | None,
        domain_saver: DomainSaver | None,
    ) -> CRMConnector: ...


@dataclass(frozen=True)
class CRMDescriptor:
    name: str  # the `crm` of a connection, and the CRM's segment in our webhook URLs
    display_name: str
    build_connector: ConnectorBuilder
    # The requests-per-second policy for a connection with these settings.
    rate_for: Callable[[Mapping[str, Any]], RatePolicy]
    # Webhook bodies: who they claim to come from (read before storing, to authenticate them),
    # and the deal events in them (read when processing). Both raise only WebhookParseError.
    read_identity: Callable[[bytes, str], WebhookIdentity]
    parse_deal_events: Callable[[bytes, str], list[DealEvent]]
    # The CRM's names of the deal events FunnelSync subscribes to through the CRM's API.
    webhook_events: tuple[str, ...]
    # The events a person can pick when registering the webhook in the CRM's UI, if fewer.
    manual_webhook_events: tuple[str, ...] | None = None
    # True: the CRM does not sign its webhooks, so a secret in our webhook URL authenticates them.
    webhook_secret_in_url: bool = False
    # True: the connection's base URL carries a credential (a Bitrix24 inbound webhook URL); only
    # its origin may be shown.
    base_url_is_secret: bool = False
    # The settings key naming the account's address as the CRM names it (portal host, subdomain),
    # and how to read that address from a host the CRM answered from (None: not one of its hosts).
    domain_setting: str = "domain"
    domain_from_host: Callable[[str], str | None] = lambda host: host
    # OAuth refresh tokens: how long one lives after it is issued (None: no OAuth).
    refresh_token_lifetime: timedelta | None = None
    # None: refresh ahead of access-token expiry. A duration: the CRM asks not to refresh on a
    # schedule, so only renew a refresh token that was not rotated for this long.
    refresh_keepalive: timedelta | None = None
    # True: an OAuth connection got its first token pair when it was created (an authorization
    # code exchanged then), so its refresh token was issued at the connection's creation.
    tokens_issued_at_creation: bool = False
    # What a person should do when the CRM rejects the stored credentials.
    credentials_advice: str = "update the connection's credentials"

    def events_to_subscribe(self, *, through_api: bool) -> tuple[str, ...]:
        if through_api or self.manual_webhook_events is None:
            return self.webhook_events
        return self.manual_webhook_events


class UnknownCRM(ValueError):
    def __init__(self, name: str) -> None:
        known = ", ".join(crm_names()) or "none"
        super().__init__(f"unknown CRM {name!r}; known CRMs: {known}")
        self.name = name


_registry: dict[str, CRMDescriptor] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    # Imported on first use, not at import time: the CRM descriptors import this module.
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        import connectors.builtin  # noqa: F401


def register(descriptor: CRMDescriptor) -> None:
    _load_builtins()
    if descriptor.name in _registry:
        raise ValueError(f"CRM {descriptor.name!r} is already registered")
    _registry[descriptor.name] = descriptor


def unregister(name: str) -> None:
    _registry.pop(name, None)


def descriptor_for(name: str) -> CRMDescriptor:
    _load_builtins()
    try:
        return _registry[name]
    except KeyError:
        raise UnknownCRM(name) from None


def descriptors() -> tuple[CRMDescriptor, ...]:
    _load_builtins()
    return tuple(_registry.values())


def crm_names() -> tuple[str, ...]:
    return tuple(d.name for d in descriptors())
