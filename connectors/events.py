"""Webhook parsing entry points for the service, dispatching to the CRM's own parser through its
descriptor.

The receivers need two things from a body before they store it: who it claims to come from (to
authenticate it) and the events' dedupe keys. The processor later needs the events themselves.
"""

from __future__ import annotations

from connectors.base import DealEvent, WebhookParseError
from connectors.descriptor import CRMDescriptor, UnknownCRM, WebhookIdentity, descriptor_for

__all__ = ["WebhookIdentity", "WebhookParseError", "parse_deal_events", "read_identity"]


def _descriptor(crm: str) -> CRMDescriptor:
    try:
        return descriptor_for(crm)
    except UnknownCRM as exc:  # the parsers' contract: WebhookParseError and nothing else
        raise WebhookParseError(str(exc)) from None


def read_identity(crm: str, body: bytes, content_type: str) -> WebhookIdentity:
    return _descriptor(crm).read_identity(body, content_type)


def parse_deal_events(crm: str, body: bytes, content_type: str) -> list[DealEvent]:
    return _descriptor(crm).parse_deal_events(body, content_type)
