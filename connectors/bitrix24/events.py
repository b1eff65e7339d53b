"""Parse Bitrix24 outbound events (deal webhooks) into DealEvents.

Wire format (DOCS api-reference/events/index.md, local-integrations/local-webhooks.md; a real capture
is in docs/crm/bitrix24.md §4): POST, `application/x-www-form-urlencoded`, PHP bracket keys, all values strings:

    event=ONCRMDEALUPDATE&event_handler_id=975&data[FIELDS][ID]=39&ts=1707749333
    &auth[domain]=b24-3tmral.bitrix24.ru&auth[client_endpoint]=https://b24-3tmral.bitrix24.ru/rest/
    &auth[server_endpoint]=https://oauth.bitrix.info/rest/&auth[member_id]=51e2...&auth[application_token]=e57x...

`event_handler_id` is optional (absent in the outgoing-webhook capture). Events carry only the deal
id: the receiver re-reads the deal through the connector.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from connectors.base import DealEvent, DealEventKind, WebhookParseError

EVENT_KINDS: dict[str, DealEventKind] = {
    "ONCRMDEALADD": "add",
    "ONCRMDEALUPDATE": "update",
    "ONCRMDEALDELETE": "delete",
    # A move to another pipeline fires only this event (not ONCRMDEALUPDATE): for the mirror it is an
    # update whose new category/stage is read back from the CRM.
    "ONCRMDEALMOVETOCATEGORY": "update",
}
# The deal events FunnelSync subscribes to: exactly the ones it reads.
DEAL_EVENTS: tuple[str, ...] = tuple(EVENT_KINDS)
# An outgoing webhook set up in the portal UI cannot subscribe to ONCRMDEALMOVETOCATEGORY (app only);
# moves between pipelines are caught by the reconciler instead.
OUTGOING_WEBHOOK_EVENTS: tuple[str, ...] = tuple(e for e in DEAL_EVENTS if e != "ONCRMDEALMOVETOCATEGORY")
MAX_BODY = 1_000_000
MAX_ID_DIGITS = 20  # an unsigned 64-bit id has at most 20 digits


__all__ = [
    "DEAL_EVENTS",
    "OUTGOING_WEBHOOK_EVENTS",
    "Bitrix24Webhook",
    "EventAuth",
    "WebhookParseError",
    "parse_webhook",
    "read_auth",
    "verify_application_token",
]


@dataclass(frozen=True)
class EventAuth:
    """Who a delivery claims to come from: enough to authenticate it before storing it."""

    domain: str
    member_id: str
    application_token: str


@dataclass(frozen=True)
class Bitrix24Webhook:
    events: list[DealEvent]
    domain: str
    member_id: str
    application_token: str
    event: str = ""
    event_handler_id: str | None = None
    client_endpoint: str | None = None
    server_endpoint: str | None = None
    sent_at: datetime | None = None
    fields: dict[str, str] = field(default_factory=dict)


def _form(body: bytes) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookParseError(f"body is not UTF-8: {exc}") from None
    if "=" not in text:
        raise WebhookParseError("body is not a form-encoded event (no key=value pairs)")
    # Not strict: a stray `&` (some relays add one) must not make a valid event unreadable.
    return dict(parse_qsl(text, keep_blank_values=True))


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}[{key}]" if prefix else str(key), item, out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, out)
    else:
        out[prefix] = "" if value is None else str(value)


def _json(body: bytes) -> dict[str, str]:
    """Not what Bitrix24 sends, but relays and our own tests may forward the event as JSON with the
    same structure (`{"event": ..., "data": {"FIELDS": {"ID": ...}}, "auth": {...}}`)."""
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookParseError(f"body is not valid JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise WebhookParseError("JSON event body must be an object")
    out: dict[str, str] = {}
    _flatten("", decoded, out)
    return out


def _sent_at(raw: str | None) -> datetime | None:
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise WebhookParseError(f"ts must be unix seconds, got {raw[:40]!r}")
    try:
        return datetime.fromtimestamp(int(raw), UTC)
    except (OverflowError, OSError, ValueError):
        raise WebhookParseError(f"ts is out of range: {raw!r}") from None


def _deal_id(raw: str, event: str) -> str:
    """The deal id as sent, if it is one: 1..20 ASCII digits. str.isdigit() alone is not enough:
    it accepts '²' and other Unicode digits that int() refuses, and an id of thousands of digits
    (over Python's int conversion limit) is no deal of any portal either."""
    if not raw:
        raise WebhookParseError(f"{event} without data[FIELDS][ID]")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_ID_DIGITS):
        shown = raw[:40] + ("..." if len(raw) > 40 else "")
        raise WebhookParseError(
            f"data[FIELDS][ID] must be a numeric deal id of 1 to {MAX_ID_DIGITS} digits, got {shown!r}"
        )
    return raw


def dedupe_key(event: str, deal_id: str, ts: str) -> str:
    """Bitrix24 events have no delivery id (`event_handler_id` names the subscription, not the
    delivery), so the key is event name + deal id + `ts` (the second the queue sent it). A repeated
    POST of the same queue entry has the same three values and is dropped; two real changes of one
    deal inside the same second collapse into one key, which loses nothing because the event carries
    only the id and processing re-reads the deal's current state from the CRM anyway."""
    return f"bitrix24:{event}:{deal_id}:{ts}"


def _read_form(body: bytes, content_type: str) -> dict[str, str]:
    if len(body) > MAX_BODY:
        raise WebhookParseError(f"body too large ({len(body)} bytes)")
    if not body.strip():
        raise WebhookParseError("empty body")
    media = (content_type or "").split(";")[0].strip().lower()
    if media in ("application/x-www-form-urlencoded", ""):
        return _form(body)
    if media in ("application/json", "text/json"):
        return _json(body)
    raise WebhookParseError(
        f"unsupported content type {content_type!r}: expected application/x-www-form-urlencoded"
    )


def _parse(body: bytes, content_type: str) -> Bitrix24Webhook:
    form = _read_form(body, content_type)
    event = form.get("event", "").strip().upper()
    if not event:
        raise WebhookParseError("no `event` field: not a Bitrix24 event")
    ts = form.get("ts", "").strip()
    sent_at = _sent_at(ts)
    events: list[DealEvent] = []
    kind = EVENT_KINDS.get(event)
    if kind is not None:
        deal_id = _deal_id(form.get("data[FIELDS][ID]", "").strip(), event)
        events.append(
            DealEvent(
                kind=kind, deal_id=deal_id, dedupe_key=dedupe_key(event, deal_id, ts), occurred_at=sent_at
            )
        )
    return Bitrix24Webhook(
        events=events,
        domain=form.get("auth[domain]", ""),
        member_id=form.get("auth[member_id]", ""),
        application_token=form.get("auth[application_token]", ""),
        event=event,
        event_handler_id=form.get("event_handler_id") or None,
        client_endpoint=form.get("auth[client_endpoint]") or None,
        server_endpoint=form.get("auth[server_endpoint]") or None,
        sent_at=sent_at,
        fields={k[len("data[FIELDS][") : -1]: v for k, v in form.items() if k.startswith("data[FIELDS][")},
    )


def parse_webhook(body: bytes, content_type: str) -> Bitrix24Webhook:
    """Parse one delivery. Events other than deal events (ONAPPTEST, lead events...) give no
    DealEvents but still parse. Anything malformed raises WebhookParseError and nothing else."""
    try:
        return _parse(body, content_type)
    except WebhookParseError:
        raise
    except Exception as exc:  # a parser bug must still surface as "unparseable", never a 500
        raise WebhookParseError(f"unreadable Bitrix24 event: {exc!r}") from exc


def read_auth(body: bytes, content_type: str) -> EventAuth:
    """Only the `auth[...]` part, for the receiver to authenticate a delivery before storing it. More
    lenient than parse_webhook on purpose: an authentic event whose data we cannot read is still
    stored and acknowledged (design "Guarantees"). Raises WebhookParseError if no form can be read."""
    try:
        form = _read_form(body, content_type)
    except WebhookParseError:
        raise
    except Exception as exc:  # never anything but WebhookParseError
        raise WebhookParseError(f"unreadable Bitrix24 event: {exc!r}") from exc
    return EventAuth(
        domain=form.get("auth[domain]", ""),
        member_id=form.get("auth[member_id]", ""),
        application_token=form.get("auth[application_token]", ""),
    )


def verify_application_token(webhook: Bitrix24Webhook, expected: str) -> bool:
    """Authenticity (DOCS local-webhooks.md "How to Verify Request Authenticity"): constant-time
    compare of auth[application_token] with the token the portal showed when the hook was made."""
    if not expected or not webhook.application_token:
        return False
    return hmac.compare_digest(webhook.application_token.encode("utf-8"), expected.encode("utf-8"))
