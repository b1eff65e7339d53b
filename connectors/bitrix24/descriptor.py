"""Bitrix24 as the service sees it: how to build its connector, read its webhooks, subscribe."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator

from connectors.base import CRMConnector, DealEvent, TokenSaver
from connectors.bitrix24 import events
from connectors.bitrix24.client import Bitrix24Connector
from connectors.bitrix24.transport import OAuthApp
from connectors.descriptor import (
    BodyToken,
    ConnectionInput,
    CRMDescriptor,
    NewConnection,
    WebhookIdentity,
    http_url,
    secret_value,
)
from connectors.factory import token_set_from
from connectors.http import BITRIX24_ENTERPRISE, BITRIX24_STANDARD, DomainSaver, RatePolicy, RetryPolicy

WEBHOOK_PATH_RE = re.compile(r"^/rest/(\d+)/([A-Za-z0-9]+)/?$")


class Bitrix24ConnectionCreate(ConnectionInput):
    crm: Literal["bitrix24"]
    webhook_url: str | None = Field(
        default=None, description="Inbound webhook URL: https://{portal}/rest/{user}/{code}/"
    )
    app_token: SecretStr | None = Field(
        default=None, description="application_token of the outgoing webhook or app (verifies events)."
    )
    # OAuth application (local or marketplace app installed on the portal).
    portal_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    access_token: SecretStr | None = None
    refresh_token: SecretStr | None = None
    oauth_server_url: str = "https://oauth.bitrix.info"
    plan: Literal["standard", "enterprise"] = "standard"

    @model_validator(mode="after")
    def _one_auth(self) -> Bitrix24ConnectionCreate:
        oauth = [self.portal_url, self.client_id, self.client_secret, self.refresh_token]
        if self.webhook_url and any(oauth):
            raise ValueError("give either webhook_url or the OAuth app credentials, not both")
        if self.webhook_url:
            http_url(self.webhook_url, "webhook_url")
            if not WEBHOOK_PATH_RE.match(urlsplit(self.webhook_url).path):
                raise ValueError(
                    "webhook_url must look like https://{portal}/rest/{user_id}/{code}/ "
                    "(copy it from the portal's inbound webhook page)"
                )
        elif all(oauth):
            http_url(self.portal_url or "", "portal_url")
            http_url(self.oauth_server_url, "oauth_server_url")
        else:
            raise ValueError(
                "Bitrix24 needs webhook_url, or portal_url + client_id + client_secret + refresh_token "
                "of an installed OAuth app"
            )
        return self

    def new_connection(self, oauth_tokens: dict[str, Any] | None) -> NewConnection:
        credentials: dict[str, Any]
        if self.webhook_url:
            base_url = self.webhook_url.rstrip("/") + "/"
            credentials = {"auth": "webhook", "webhook_url": base_url}
        else:
            base_url = (self.portal_url or "").rstrip("/")
            credentials = {
                "auth": "oauth",
                "client_id": self.client_id,
                "client_secret": secret_value(self.client_secret),
                "access_token": secret_value(self.access_token),
                "refresh_token": secret_value(self.refresh_token),
                "oauth_server_url": self.oauth_server_url.rstrip("/"),
            }
        if self.app_token is not None:
            credentials["app_token"] = self.app_token.get_secret_value()
        settings = {"plan": self.plan, "domain": urlsplit(base_url).netloc}
        return NewConnection(base_url, settings, credentials)


def rate_for(settings: Mapping[str, Any]) -> RatePolicy:
    return BITRIX24_ENTERPRISE if settings.get("plan") == "enterprise" else BITRIX24_STANDARD


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
    if credentials["auth"] == "webhook":
        return Bitrix24Connector(
            webhook_url=credentials["webhook_url"],
            rate=rate,
            retry=retry,
            account_key=account_key,
            domain_saver=domain_saver,
        )
    if token_saver is None:
        raise ValueError("a Bitrix24 OAuth connection needs a token saver")
    oauth = OAuthApp(
        client_endpoint=base_url.rstrip("/") + "/rest/",
        client_id=credentials["client_id"],
        client_secret=credentials["client_secret"],
        tokens=token_set_from(credentials),
        token_saver=token_saver,
        oauth_server=credentials.get("oauth_server_url") or "https://oauth.bitrix.info",
        member_id=settings.get("member_id"),
    )
    return Bitrix24Connector(
        oauth=oauth, rate=rate, retry=retry, account_key=account_key, domain_saver=domain_saver
    )


def read_identity(body: bytes, content_type: str) -> WebhookIdentity:
    auth = events.read_auth(body, content_type)
    return WebhookIdentity(auth.domain, auth.member_id, auth.application_token)


def parse_deal_events(body: bytes, content_type: str) -> list[DealEvent]:
    return list(events.parse_webhook(body, content_type).events)


BITRIX24 = CRMDescriptor(
    name="bitrix24",
    display_name="Bitrix24",
    build_connector=build_connector,
    connection_input=Bitrix24ConnectionCreate,
    rate_for=rate_for,
    read_identity=read_identity,
    parse_deal_events=parse_deal_events,
    webhook_events=events.DEAL_EVENTS,
    manual_webhook_events=events.OUTGOING_WEBHOOK_EVENTS,
    # Events carry auth[application_token], checked against the one stored with the connection.
    webhook_auth=BodyToken(
        credential="app_token",
        carried_in="auth[application_token]",
        not_stored="this connection has no application token; add the outgoing webhook's token "
        "(connections add ... --app-token) so events can be verified",
    ),
    base_url_is_secret=True,
    domain_setting="domain",
    account_id_setting="member_id",
    domain_from_host=lambda host: host,
    # DOCS settings/oauth/auto-renewal.md: a refresh token lives 180 days; hourly or daily refreshes
    # are "excessive" and can get the app blocked, so calls refresh on expired_token and the upkeep
    # job renews only a refresh token that was not rotated for 30 days.
    refresh_token_lifetime=timedelta(days=180),
    refresh_keepalive=timedelta(days=30),
    credentials_advice="create a new inbound webhook (or reinstall the app) and update the connection",
    sandbox="connectors.bitrix24.sandbox.kit:KIT",
    # crm.deal.update and crm.item.add (useOriginalUfNames=Y) take user fields by UF_CRM_* name.
    custom_fields_by_name=True,
    # A deal's enumeration user field holds the list item's ID (crm.deal.userfield.list LIST[].ID).
    enum_values_by_id=True,
)
