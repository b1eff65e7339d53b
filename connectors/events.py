"""Webhook parsing entry points for the service, dispatching to the CRM's own parser.

The receivers need two things from a body before they store it: who it claims to come from (to
authenticate it) and the events' dedupe keys. The processor later needs the events themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.amocrm import events as amocrm_events
from connectors.base import DealEvent, WebhookParseError
from connectors.bitrix24 import events as bitrix24_events

__all__ = ["WebhookIdentity", "WebhookParseError", "parse_deal_events", "read_identity"]


@dataclass(frozen=True)
class WebhookIdentity:
    """What a body says about its sender: portal/subdomain, member/account id, app token."""

    domain: str | None = None
    account_id: str | None = None
    application_token: str | None = None


def read_identity(crm: str, body: bytes, content_type: str) -> WebhookIdentity:
    if crm == "bitrix24":
        auth = bitrix24_events.read_auth(body, content_type)
        return WebhookIdentity(auth.domain, auth.member_id, auth.application_token)
    if crm == "amocrm":
        hook = amocrm_events.parse_webhook(body, content_type)
        return WebhookIdentity(hook.subdomain, hook.account_id, None)
    raise WebhookParseError(f"unknown CRM {crm!r}")


def parse_deal_events(crm: str, body: bytes, content_type: str) -> list[DealEvent]:
    if crm == "bitrix24":
        return list(bitrix24_events.parse_webhook(body, content_type).events)
    if crm == "amocrm":
        return list(amocrm_events.parse_webhook(body, content_type).events)
    raise WebhookParseError(f"unknown CRM {crm!r}")
