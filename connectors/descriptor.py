"""What the service needs to know about each CRM, in one record per CRM, and the registry of them.

Each CRM describes itself in its own folder (`connectors/<crm>/descriptor.py`); connectors/builtin.py
registers the built-in ones. The service looks a connection's CRM up here instead of branching on
its name, so a new CRM is its folder plus one registration line.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors.base import CRMConnector, DealEvent, TokenSaver
from connectors.http import DomainSaver, RatePolicy, RetryPolicy

if TYPE_CHECKING:  # the sandboxes are not in the runtime package; only their kits' types are named
    from connectors.sandbox_support.kit import SandboxKit

__all__ = [
    "BodyToken",
    "CRMDescriptor",
    "ConnectionInput",
    "ConnectorBuilder",
    "NewConnection",
    "SandboxMissing",
    "UnknownCRM",
    "UrlSecret",
    "WebhookAuth",
    "WebhookIdentity",
    "crm_names",
    "descriptor_for",
    "descriptors",
    "http_url",
    "register",
    "sandbox_kit",
    "secret_value",
    "unregister",
]

CONNECTION_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class WebhookIdentity:
    """What a body says about its sender: portal/subdomain, member/account id, app token."""

    domain: str | None = None
    account_id: str | None = None
    application_token: str | None = None


@dataclass(frozen=True)
class UrlSecret:
    """The CRM does not sign its webhooks: a secret we generate is the last segment of our webhook URL
    (/webhooks/<crm>/<connection>/<secret>), compared with the copy in the connection's credentials.
    A body that cannot be read is still stored (as failed): the secret already proved the sender."""

    credential: str = "webhook_secret"  # the copy's key in the connection's credentials


@dataclass(frozen=True)
class BodyToken:
    """Each webhook body carries a token the CRM issued for the hook, compared with the copy stored in
    the connection's credentials; our webhook URL has no secret. A body the token cannot be read from
    is refused: nothing proved its sender."""

    credential: str  # the copy's key in the connection's credentials
    carried_in: str  # where a body carries the token, as refusals name it
    not_stored: str  # the refusal when the connection has no copy: what to do about it


WebhookAuth = UrlSecret | BodyToken


def http_url(value: str, what: str) -> str:
    """`value` when it is an http(s) URL; a ValueError naming `what` otherwise (input validation)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an http(s) URL, got {value!r}")
    return value


def secret_value(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


@dataclass(frozen=True)
class NewConnection:
    """What a connection stores, read from a person's input: everything but its name."""

    base_url: str
    settings: dict[str, Any]
    credentials: dict[str, Any]


class ConnectionInput(BaseModel):
    """What a person gives to add a connection (API body, CLI options). Each CRM's subclass adds its
    `crm: Literal["<name>"]` tag, its own fields and validators, and says what the connection stores;
    the service validates input against the union of the registered CRMs' subclasses."""

    model_config = ConfigDict(extra="forbid")

    crm: str
    name: str = Field(description="Connection name: lowercase letters, digits, '-' and '_'.")
    supervisor_id: str | None = Field(default=None, description="CRM user id that receives SLA escalations.")

    @field_validator("name")
    @classmethod
    def _name_shape(cls, name: str) -> str:
        if not CONNECTION_NAME_RE.match(name):
            raise ValueError(
                "name must be 1-64 characters of lowercase letters, digits, '-' and '_', "
                "starting with a letter or digit (it becomes part of the webhook URL)"
            )
        return name

    def new_connection(self, oauth_tokens: dict[str, Any] | None) -> NewConnection:
        """The base URL, settings and credentials to store. `oauth_tokens`: what
        exchange_authorization returned, if anything."""
        raise NotImplementedError

    async def exchange_authorization(self) -> dict[str, Any] | None:
        """The token pair an authorization code in this input is exchanged for, or None when the
        input carries none. Raises CRMError when the CRM refuses the code."""
        return None


class ConnectorBuilder(Protocol):
    """Build a connector from what a connection stores (its base URL, decrypted credentials and
    settings). `account_key` names the portal/account its rate limit is shared under; `retry` is how
    one call is retried (None: the connector's default)."""

    def __call__(
        self,
        base_url: str,
        credentials: dict[str, Any],
        settings: Mapping[str, Any],
        *,
        account_key: str,
        token_saver: TokenSaver | None,
        domain_saver: DomainSaver | None,
        retry: RetryPolicy | None = None,
    ) -> CRMConnector: ...


@dataclass(frozen=True)
class CRMDescriptor:
    name: str  # the `crm` of a connection, and the CRM's segment in our webhook URLs
    display_name: str
    build_connector: ConnectorBuilder
    # The input a person gives to add a connection to this CRM (its `crm` tag is `name`).
    connection_input: type[ConnectionInput]
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
    # How a webhook delivery proves its sender: a secret in our URL, or a token in the body.
    webhook_auth: WebhookAuth = field(default_factory=UrlSecret)
    # The settings key of the account id a webhook body names, compared with the connection's (an id
    # never changes, so a mismatch is refused; the address under domain_setting may: it is recorded).
    account_id_setting: str = "account_id"
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
    # "module:attribute" of the CRM's SandboxKit (an emulator the demo runs), or None. Imported only
    # when asked for: the sandboxes are development code, left out of the runtime package.
    sandbox: str | None = None
    # True: a deal's custom fields are written under their names (Bitrix24's UF_CRM_*), else under
    # their ids (amoCRM's field_id).
    custom_fields_by_name: bool = False
    # True: an enumeration field's value is written as the option's id (a Bitrix24 list item ID; its
    # text would not be stored), else as the option's text (amoCRM selects take `value`).
    enum_values_by_id: bool = False

    def field_write_key(self, crm_id: str, crm_name: str | None) -> str:
        """The key a FieldUpdate or NewDeal carries a custom field under."""
        return crm_name if self.custom_fields_by_name and crm_name else crm_id

    @property
    def webhook_secret_in_url(self) -> bool:
        return isinstance(self.webhook_auth, UrlSecret)

    def events_to_subscribe(self, *, through_api: bool) -> tuple[str, ...]:
        if through_api or self.manual_webhook_events is None:
            return self.webhook_events
        return self.manual_webhook_events


class SandboxMissing(LookupError):
    """The CRM has no sandbox, or this install leaves the sandboxes out."""


def sandbox_kit(descriptor: CRMDescriptor) -> SandboxKit:
    if descriptor.sandbox is None:
        raise SandboxMissing(f"{descriptor.display_name} has no sandbox")
    module_name, _, attribute = descriptor.sandbox.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise SandboxMissing(f"the {descriptor.display_name} sandbox is not installed ({exc.name})") from exc
    kit: SandboxKit = getattr(module, attribute)
    return kit


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
