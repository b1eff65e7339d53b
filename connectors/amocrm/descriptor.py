"""amoCRM as the service sees it: how to build its connector, read its webhooks, subscribe."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from connectors.amocrm import events
from connectors.amocrm.client import AmoCRMConnector, exchange_authorization_code
from connectors.amocrm.oauth import OAuthApp
from connectors.base import CRMConnector, DealEvent, TokenSaver
from connectors.descriptor import (
    ConnectionInput,
    CRMDescriptor,
    NewConnection,
    UrlSecret,
    WebhookIdentity,
    http_url,
    secret_value,
)
from connectors.factory import token_set_from, token_set_to
from connectors.http import DomainSaver, RatePolicy, RetryPolicy

_ACCOUNT_HOST = re.compile(r"^([a-z0-9][a-z0-9-]*)\.(?:amocrm\.ru|amocrm\.com|kommo\.com)$")
SUBDOMAIN_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class AmoCRMConnectionCreate(ConnectionInput):
    crm: Literal["amocrm"]
    subdomain: str
    base_url: str | None = Field(
        default=None, description="Override https://{subdomain}.amocrm.ru (a sandbox, or .kommo.com)."
    )
    token: SecretStr | None = Field(default=None, description="Long-lived token of a private integration.")
    client_id: str | None = None
    client_secret: SecretStr | None = None
    redirect_uri: str | None = None
    auth_code: SecretStr | None = Field(default=None, description="Authorization code (valid 20 minutes).")
    requests_per_second: float = Field(default=7, gt=0, le=50)

    @field_validator("subdomain")
    @classmethod
    def _subdomain_shape(cls, value: str) -> str:
        if not SUBDOMAIN_RE.match(value):
            raise ValueError(
                "subdomain must be the account's subdomain, e.g. 'mycompany' of mycompany.amocrm.ru"
            )
        return value

    @model_validator(mode="after")
    def _one_auth(self) -> AmoCRMConnectionCreate:
        oauth = [self.client_id, self.client_secret, self.redirect_uri, self.auth_code]
        if self.token and any(oauth):
            raise ValueError("give either token or the OAuth client credentials with auth_code, not both")
        if not self.token and not all(oauth):
            raise ValueError(
                "amoCRM needs token (long-lived), or client_id + client_secret + redirect_uri + auth_code"
            )
        if self.base_url:
            http_url(self.base_url, "base_url")
        if self.redirect_uri:
            http_url(self.redirect_uri, "redirect_uri")
        return self

    @property
    def resolved_base_url(self) -> str:
        return (self.base_url or f"https://{self.subdomain}.amocrm.ru").rstrip("/")

    async def exchange_authorization(self) -> dict[str, Any] | None:
        if self.auth_code is None:
            return None
        assert self.client_id and self.client_secret and self.redirect_uri  # checked by _one_auth
        # The code is valid 20 minutes: trade it for the first token pair now.
        oauth = OAuthApp(self.client_id, self.client_secret.get_secret_value(), self.redirect_uri)
        tokens = await exchange_authorization_code(
            self.subdomain, oauth, self.auth_code.get_secret_value(), base_url=self.resolved_base_url
        )
        return token_set_to(tokens)

    def new_connection(self, oauth_tokens: dict[str, Any] | None) -> NewConnection:
        credentials: dict[str, Any]
        if self.token is not None:
            credentials = {"auth": "token", "token": self.token.get_secret_value()}
        else:
            credentials = {
                "auth": "oauth",
                "client_id": self.client_id,
                "client_secret": secret_value(self.client_secret),
                "redirect_uri": self.redirect_uri,
                **(oauth_tokens or {}),
            }
        # The webhook URL carries this secret: amoCRM webhooks are not signed.
        credentials["webhook_secret"] = secrets.token_urlsafe(24)
        settings = {"subdomain": self.subdomain, "requests_per_second": self.requests_per_second}
        return NewConnection(self.resolved_base_url, settings, credentials)


def rate_for(settings: Mapping[str, Any]) -> RatePolicy:
    per_second = float(settings.get("requests_per_second") or 7)
    return RatePolicy(per_second=per_second, burst=max(1, int(per_second)))


def build_connector(
    base_url: str,
    credentials: dict[str, Any],
    settings: Mapping[str, Any],
    *,
    account_key: str,
    token_saver: TokenSaver | None,
    domain_saver: DomainSaver | None,
    retry: RetryPolicy | None = None,
) -> CRMConnector:
    rate = rate_for(settings)
    subdomain = str(settings["subdomain"])
    if credentials["auth"] == "token":
        return AmoCRMConnector(
            subdomain,
            token=credentials["token"],
            base_url=base_url,
            rate=rate,
            retry=retry,
            account_key=account_key,
            domain_saver=domain_saver,
        )
    if token_saver is None:
        raise ValueError("an amoCRM OAuth connection needs a token saver")
    return AmoCRMConnector(
        subdomain,
        oauth=OAuthApp(credentials["client_id"], credentials["client_secret"], credentials["redirect_uri"]),
        tokens=token_set_from(credentials),
        token_saver=token_saver,
        base_url=base_url,
        rate=rate,
        account_key=account_key,
        domain_saver=domain_saver,
    )


def read_identity(body: bytes, content_type: str) -> WebhookIdentity:
    hook = events.parse_webhook(body, content_type)
    return WebhookIdentity(hook.subdomain, hook.account_id, None)


def parse_deal_events(body: bytes, content_type: str) -> list[DealEvent]:
    return list(events.parse_webhook(body, content_type).events)


def subdomain_of(host: str) -> str | None:
    """The account's subdomain when `host` is one of amoCRM's own account hosts."""
    found = _ACCOUNT_HOST.match(host.lower())
    return found.group(1) if found else None


AMOCRM = CRMDescriptor(
    name="amocrm",
    display_name="amoCRM",
    build_connector=build_connector,
    connection_input=AmoCRMConnectionCreate,
    rate_for=rate_for,
    read_identity=read_identity,
    parse_deal_events=parse_deal_events,
    webhook_events=events.WEBHOOK_EVENTS,
    # amoCRM webhooks are not signed: the secret in our URL is what authenticates them.
    webhook_auth=UrlSecret(credential="webhook_secret"),
    domain_setting="subdomain",
    account_id_setting="account_id",
    domain_from_host=subdomain_of,
    # Refresh tokens live 3 months (ISSUE amocrm-api-php #246); access tokens 24 h, refreshed
    # ahead of expiry, which rotates the pair about once a day.
    refresh_token_lifetime=timedelta(days=90),
    tokens_issued_at_creation=True,
    credentials_advice="issue a new long-lived token or authorization code and update the connection",
    sandbox="connectors.amocrm.sandbox.kit:KIT",
)
