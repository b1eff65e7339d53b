"""Parse amoCRM account webhooks (x-www-form-urlencoded, PHP-style nested keys) into DealEvents.

amoCRM posts `leads[status][0][id]=...&leads[status][0][custom_fields][0][values][0][value]=...&
account[subdomain]=...` (docs/crm/amocrm.md §7, real captures). Every value is a string; indexes `[0]`, `[1]`
mean one POST can carry several leads and several kinds of event. Field names are the old v2 ones:
`status_id`, `pipeline_id`, `price`, `responsible_user_id`, `last_modified`, `date_create`.

Anything we cannot read raises WebhookParseError (a ValueError) with a message that says what is
wrong, never another exception: the receiver stores such bodies as failed events and still answers
2xx, because amoCRM disables a hook after 100 invalid answers in 2 hours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from connectors.base import DealEvent, DealEventKind, DealSnapshot, WebhookParseError

# The kinds under `leads[...]` that describe a lead change; `note` (a note added to a lead) is not.
LEAD_KINDS: tuple[DealEventKind, ...] = ("add", "update", "status", "responsible", "delete", "restore")
# The webhook settings FunnelSync subscribes an account to: each lead kind above.
WEBHOOK_EVENTS = ("add_lead", "update_lead", "status_lead", "delete_lead", "restore_lead", "responsible_lead")
WON_STATUS_ID = "142"
LOST_STATUS_ID = "143"
# A nested key: a name followed by any number of [segments]; anything else is not PHP form syntax.
_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT_RE = re.compile(r"\[([^\[\]]*)\]")
MAX_FIELDS = 20_000  # a POST with 50 leads x 40 custom fields stays far below this
MAX_ID_DIGITS = 20  # an unsigned 64-bit id has at most 20 digits


@dataclass(frozen=True)
class AmoWebhook:
    events: list[DealEvent]
    account_id: str | None
    subdomain: str | None


@dataclass
class _Node:
    """One key of the nested form. A key can be both scalar and nested in one body
    (`x[custom_fields]=` and `x[custom_fields][0][id]=1`), so a node holds both."""

    value: str | None = None
    children: dict[str, _Node] = field(default_factory=dict)

    def child(self, key: str) -> _Node | None:
        return self.children.get(key)

    def text(self, key: str) -> str | None:
        node = self.children.get(key)
        if node is None:
            return None
        return node.value

    def items(self) -> list[tuple[str, _Node]]:
        """Children in index order: numeric keys by value, others after them by name."""
        return sorted(
            self.children.items(), key=lambda kv: (0, int(kv[0]), "") if _is_id(kv[0]) else (1, 0, kv[0])
        )


def _expand(pairs: Iterable[tuple[str, str]]) -> _Node:
    root = _Node()
    for key, value in pairs:
        match = _KEY_RE.match(key)
        if match is None:
            raise WebhookParseError(f"key {key[:80]!r} is not a form key like leads[update][0][id]")
        parts = [match.group(1), *_SEGMENT_RE.findall(match.group(2))]
        node = root
        for part in parts:
            if part == "":  # PHP `a[]=x` appends: give it the next free index
                part = str(len(node.children))
            node = node.children.setdefault(part, _Node())
        node.value = value
    return root


def _ts(raw: str | None, what: str) -> datetime | None:
    if raw is None or raw == "":
        return None
    try:
        return datetime.fromtimestamp(int(raw), tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise WebhookParseError(f"{what} {raw[:40]!r} is not a unix timestamp") from exc


def _is_id(text: str) -> bool:
    """1..20 ASCII digits. str.isdigit() alone is not enough: it accepts '²' and other Unicode
    digits (int() refuses some and reads others as a different id), and an id of thousands of
    digits is over Python's int conversion limit."""
    return text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS


def _int_id(raw: str | None, what: str) -> str:
    if raw is None or not _is_id(raw.strip()):
        shown = "missing" if raw is None else repr(raw[:40])
        raise WebhookParseError(f"{what} is {shown}, expected a numeric id of 1 to {MAX_ID_DIGITS} digits")
    return str(int(raw))


def _optional_id(raw: str | None, what: str) -> str | None:
    if raw is None or raw.strip() in ("", "0"):
        return None
    return _int_id(raw, what)


def normalise_value(value: Any) -> str:
    """One representation for custom field values from webhooks and from the REST API, so the
    mirror sees the same deal the same way whichever path reported it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _custom_fields(node: _Node | None, where: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if node is None:
        return fields
    for _, cf in node.items():
        field_id = _int_id(cf.text("id"), f"{where}[custom_fields][..][id]")
        values: list[str] = []
        values_node = cf.child("values")
        for _, v in values_node.items() if values_node else []:
            if v.children:  # {value, enum}: text fields, selects (enum = the option id)
                text = v.text("value")
                if text is None:
                    text = v.text("enum")
                if text is not None:
                    values.append(normalise_value(text))
            elif v.value is not None:  # date fields come as values[0]=<ts>, no `value` key
                values.append(normalise_value(v.value))
        fields[field_id] = values[0] if len(values) == 1 else values
    return fields


def _snapshot(item: _Node, lead_id: str, where: str) -> DealSnapshot | None:
    status_id = item.text("status_id")
    pipeline_id = item.text("pipeline_id")
    updated = _ts(item.text("updated_at"), f"{where}[updated_at]") or _ts(
        item.text("last_modified"), f"{where}[last_modified]"
    )
    if not status_id or not pipeline_id or updated is None:
        return None  # not enough to mirror: the processor fetches the lead instead
    stage = _int_id(status_id, f"{where}[status_id]")
    price_raw = item.text("price")
    amount: Decimal | None = None
    if price_raw not in (None, ""):
        try:
            amount = Decimal(price_raw)
        except InvalidOperation as exc:
            raise WebhookParseError(f"{where}[price] {price_raw[:40]!r} is not a number") from exc
    return DealSnapshot(
        id=lead_id,
        pipeline_id=_int_id(pipeline_id, f"{where}[pipeline_id]"),
        stage_id=stage,
        title=item.text("name") or "",
        updated_at=updated,
        created_at=_ts(item.text("created_at"), f"{where}[created_at]")
        or _ts(item.text("date_create"), f"{where}[date_create]"),
        amount=amount,
        responsible_id=_optional_id(item.text("responsible_user_id"), f"{where}[responsible_user_id]"),
        closed=stage in (WON_STATUS_ID, LOST_STATUS_ID),
        loss_reason_id=_optional_id(item.text("loss_reason_id"), f"{where}[loss_reason_id]"),
        fields=_custom_fields(item.child("custom_fields"), where),
    )


def _events(leads: _Node) -> list[DealEvent]:
    events: list[DealEvent] = []
    for kind in LEAD_KINDS:
        group = leads.child(kind)
        if group is None:
            continue
        for index, item in group.items():
            where = f"leads[{kind}][{index}]"
            if not item.children:
                raise WebhookParseError(f"{where} is not a lead (no fields)")
            lead_id = _int_id(item.text("id"), f"{where}[id]")
            occurred = _ts(item.text("updated_at"), f"{where}[updated_at]") or _ts(
                item.text("last_modified"), f"{where}[last_modified]"
            )
            snapshot = None if kind == "delete" else _snapshot(item, lead_id, where)
            # Why kind + id + modify time: amoCRM re-sends an undelivered hook with the same body, and
            # one change produces several kinds (a stage move sends `update` and `status`), each its
            # own event. A later change of the same lead has a newer modify time, so it never
            # collides. A delete has no modify time; a lead is deleted once, and a delete after a
            # restore carries the restore's status, so status is added for deletes.
            stamp = str(int(occurred.timestamp())) if occurred else f"s{item.text('status_id') or ''}"
            events.append(
                DealEvent(
                    kind=kind,
                    deal_id=lead_id,
                    dedupe_key=f"amocrm:{kind}:{lead_id}:{stamp}",
                    occurred_at=occurred,
                    snapshot=snapshot,
                )
            )
    return events


def parse_webhook(body: bytes, content_type: str) -> AmoWebhook:
    """Read one amoCRM webhook POST. Non-lead entities (contacts, tasks, notes) yield no events."""
    try:
        return _parse(body, content_type)
    except WebhookParseError:
        raise
    except Exception as exc:  # the contract is one exception type, whatever the body holds
        raise WebhookParseError(f"unreadable webhook body ({type(exc).__name__}: {exc})") from exc


def _parse(body: bytes, content_type: str) -> AmoWebhook:
    media = content_type.split(";", 1)[0].strip().lower()
    if media and media != "application/x-www-form-urlencoded":
        raise WebhookParseError(
            f"content type {media!r}: amoCRM webhooks are application/x-www-form-urlencoded"
        )
    if not body.strip():
        raise WebhookParseError("empty body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookParseError(f"body is not UTF-8 (byte {exc.start})") from exc
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, max_num_fields=MAX_FIELDS)
    except ValueError as exc:
        raise WebhookParseError(f"body is not form-encoded: {exc}") from exc
    root = _expand(pairs)
    account = root.child("account")
    account_id = _optional_id(account.text("id"), "account[id]") if account else None
    subdomain = (account.text("subdomain") or None) if account else None
    leads = root.child("leads")
    if leads is not None and not leads.children:
        raise WebhookParseError("`leads` is not a nested list of lead events")
    if account_id is None and leads is not None:
        for kind in LEAD_KINDS:  # older captures carry the account only inside each lead
            group = leads.child(kind)
            for _, item in group.items() if group else []:
                account_id = account_id or _optional_id(item.text("account_id"), "lead account_id")
    if account_id is None and subdomain is None:
        raise WebhookParseError("no account[id] or account[subdomain]: not an amoCRM account webhook")
    events = _events(leads) if leads is not None else []
    return AmoWebhook(events=events, account_id=account_id, subdomain=subdomain)
