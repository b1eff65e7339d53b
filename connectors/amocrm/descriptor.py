"""amoCRM as the service sees it: how to build its connector, read its webhooks, subscribe."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from connectors.amocrm import events
from connectors.amocrm.client import AmoCRMConnector
from connectors.amocrm.oauth import OAuthApp
from connectors.base import CRMConnector, DealEvent, TokenSaver
from connectors.descriptor import CRMDescriptor, WebhookIdentity
from connectors.factory import token_set_from
from connectors.http import DomainSaver, RatePolicy

_ACCOUNT_HOST = re.compile(r"^([a-z0-9][a-z0-9-]*)\.(?:amocrm\.ru|amocrm\.com|kommo\.com)$")


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
) -> CRMConnector:
    rate = rate_for(settings)
    subdomain = str(settings["subdomain"])
    if credentials["auth"] == "token":
        return AmoCRMConnector(
            subdomain,
            token=credentials["token"],
            base_url=base_url,
            rate=rate,
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
    rate_for=rate_for,
    read_identity=read_identity,
    parse_deal_events=parse_deal_events,
    webhook_events=events.WEBHOOK_EVENTS,
    # amoCRM webhooks are not signed: the secret in our URL is what authenticates them.
    webhook_secret_in_url=True,
    domain_setting="subdomain",
    domain_from_host=subdomain_of,
    # Refresh tokens live 3 months (ISSUE amocrm-api-php #246); access tokens 24 h, refreshed
    # ahead of expiry, which rotates the pair about once a day.
    refresh_token_lifetime=timedelta(days=90),
    tokens_issued_at_creation=True,
    credentials_advice="issue a new long-lived token or authorization code and update the connection",
)
