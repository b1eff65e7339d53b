"""Bitrix24 as the service sees it: how to build its connector, read its webhooks, subscribe."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from connectors.base import CRMConnector, DealEvent, TokenSaver
from connectors.bitrix24 import events
from connectors.bitrix24.client import Bitrix24Connector
from connectors.bitrix24.transport import OAuthApp
from connectors.descriptor import CRMDescriptor, WebhookIdentity
from connectors.factory import token_set_from
from connectors.http import BITRIX24_ENTERPRISE, BITRIX24_STANDARD, DomainSaver, RatePolicy


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
) -> CRMConnector:
    rate = rate_for(settings)
    if credentials["auth"] == "webhook":
        return Bitrix24Connector(
            webhook_url=credentials["webhook_url"],
            rate=rate,
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
    return Bitrix24Connector(oauth=oauth, rate=rate, account_key=account_key, domain_saver=domain_saver)


def read_identity(body: bytes, content_type: str) -> WebhookIdentity:
    auth = events.read_auth(body, content_type)
    return WebhookIdentity(auth.domain, auth.member_id, auth.application_token)


def parse_deal_events(body: bytes, content_type: str) -> list[DealEvent]:
    return list(events.parse_webhook(body, content_type).events)


BITRIX24 = CRMDescriptor(
    name="bitrix24",
    display_name="Bitrix24",
    build_connector=build_connector,
    rate_for=rate_for,
    read_identity=read_identity,
    parse_deal_events=parse_deal_events,
    webhook_events=events.DEAL_EVENTS,
    manual_webhook_events=events.OUTGOING_WEBHOOK_EVENTS,
    # Events carry auth[application_token], checked against the one stored with the connection.
    webhook_secret_in_url=False,
    base_url_is_secret=True,
    domain_setting="domain",
    domain_from_host=lambda host: host,
    # DOCS settings/oauth/auto-renewal.md: a refresh token lives 180 days; hourly or daily refreshes
    # are "excessive" and can get the app blocked, so calls refresh on expired_token and the upkeep
    # job renews only a refresh token that was not rotated for 30 days.
    refresh_token_lifetime=timedelta(days=180),
    refresh_keepalive=timedelta(days=30),
    credentials_advice="create a new inbound webhook (or reinstall the app) and update the connection",
)
