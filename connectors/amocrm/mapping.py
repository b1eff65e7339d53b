"""amoCRM API v4 entities <-> FunnelSync DTOs."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from connectors.amocrm.events import LOST_STATUS_ID, WON_STATUS_ID, normalise_value
from connectors.base import (
    ContactInfo,
    CustomField,
    CustomFieldType,
    DealSnapshot,
    FieldOption,
    LossReason,
    NewField,
    NewStage,
    Pipeline,
    Stage,
    StageSemantics,
    WebhookSubscription,
)

WON, LOST = int(WON_STATUS_ID), int(LOST_STATUS_ID)
UNSORTED_TYPE = 1

# The marker the outbox writes into every task and comment it creates ("[fs:<command id>]", see
# app.outbox.items.marker): it finds them again when it cannot tell whether amoCRM saved them.
_MARKER = re.compile(r"\[fs:[^\[\]\s]+\]")


def created_text(kind: str, payload: dict[str, Any]) -> str:
    """The text of a task (`text`) or common note (`params.text`) payload or API entity."""
    text = payload.get("text") if kind == "task" else (payload.get("params") or {}).get("text")
    return text if isinstance(text, str) else ""


def marker_in(text: str) -> str | None:
    """The last outbox marker in `text` (the outbox appends it), or None when there is none."""
    found = _MARKER.findall(text)
    return found[-1] if found else None


# Our field types -> amoCRM custom field types (PHPLIB CustomFieldModel types). Money is `numeric`:
# `monetary` needs a currency setup the account may not have.
FIELD_TYPES: dict[CustomFieldType, str] = {
    "string": "text",
    "text": "textarea",
    "number": "numeric",
    "money": "numeric",
    "date": "date",
    "datetime": "date_time",
    "enum": "select",
    "boolean": "checkbox",
    "url": "url",
}
_OUR_TYPES = {
    "text": "string",
    "textarea": "text",
    "numeric": "number",
    "monetary": "money",
    "price": "money",
    "date": "date",
    "date_time": "datetime",
    "select": "enum",
    "radiobutton": "enum",
    "multiselect": "enum",
    "checkbox": "boolean",
    "url": "url",
}


def _ts(value: Any) -> datetime | None:
    if value in (None, "", 0):
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def embedded(body: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return []
    items = (body.get("_embedded") or {}).get(key)
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def stage_from_api(status: dict[str, Any], pipeline_id: str) -> Stage:
    sid = int(status["id"])
    semantics: StageSemantics = "success" if sid == WON else "failure" if sid == LOST else "process"
    unsorted = status.get("type") == UNSORTED_TYPE
    return Stage(
        id=str(sid),
        pipeline_id=str(status.get("pipeline_id") or pipeline_id),
        name=str(status.get("name", "")),
        sort=int(status.get("sort") or 0),
        semantics=semantics,
        color=status.get("color"),
        system=unsorted or sid in (WON, LOST),
        editable=not unsorted,
    )


def pipeline_from_api(data: dict[str, Any]) -> Pipeline:
    pid = str(data["id"])
    stages = tuple(sorted((stage_from_api(s, pid) for s in embedded(data, "statuses")), key=lambda s: s.sort))
    return Pipeline(
        id=pid,
        name=str(data.get("name", "")),
        sort=int(data.get("sort") or 0),
        stages=stages,
        is_main=bool(data.get("is_main")),
    )


def new_status_payload(stage: NewStage) -> dict[str, Any]:
    """A stage inside a new pipeline. Won/lost are the pipeline's own 142/143, renamed by id."""
    if stage.semantics == "success":
        return {"id": WON, "name": stage.name}
    if stage.semantics == "failure":
        return {"id": LOST, "name": stage.name}
    return {"name": stage.name, "sort": stage.sort, "color": stage.color}


def field_values(cf: dict[str, Any]) -> Any:
    """A field's value as the webhook parser reports it: one string, or a list for several."""
    values = [
        normalise_value(v.get("value"))
        for v in cf.get("values") or []
        if isinstance(v, dict) and v.get("value") is not None
    ]
    return values[0] if len(values) == 1 else values


def deal_from_api(lead: dict[str, Any]) -> DealSnapshot:
    status = str(lead["status_id"])
    price = lead.get("price")
    amount: Decimal | None = None
    if price is not None:
        try:
            amount = Decimal(str(price))
        except InvalidOperation:
            amount = None
    fields = {
        str(cf["field_id"]): field_values(cf)
        for cf in lead.get("custom_fields_values") or []  # null and [] alike (docs/crm/amocrm.md §5)
        if isinstance(cf, dict) and "field_id" in cf
    }
    responsible = lead.get("responsible_user_id")
    loss = lead.get("loss_reason_id")
    return DealSnapshot(
        id=str(lead["id"]),
        pipeline_id=str(lead["pipeline_id"]),
        stage_id=status,
        title=str(lead.get("name") or ""),
        updated_at=_ts(lead.get("updated_at")) or datetime.now(UTC),
        created_at=_ts(lead.get("created_at")),
        amount=amount,
        responsible_id=str(responsible) if responsible else None,
        closed=status in (WON_STATUS_ID, LOST_STATUS_ID),
        loss_reason_id=str(loss) if loss else None,
        fields=fields,
    )


def field_payload(field: NewField) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": FIELD_TYPES[field.type],
        "name": field.name,
        # Codes of amoCRM's own fields are upper case (PHONE, EMAIL); ours follow that. Whether the
        # API also accepts lower case is unverified, upper case is accepted either way.
        "code": field.code.upper(),
        "sort": field.sort,
    }
    if field.type == "enum":
        payload["enums"] = [{"value": option, "sort": (i + 1) * 10} for i, option in enumerate(field.options)]
    return payload


def field_from_api(data: dict[str, Any]) -> CustomField:
    code = data.get("code")
    return CustomField(
        id=str(data["id"]),
        # Our codes are lower case; amoCRM keeps what we sent upper case (see field_payload).
        code=str(code).lower() if code else None,
        crm_name=str(code or data.get("name") or data["id"]),
        name=str(data.get("name", "")),
        type=_OUR_TYPES.get(str(data.get("type")), str(data.get("type"))),
        options=tuple(
            FieldOption(str(e["id"]), str(e.get("value", "")))
            for e in data.get("enums") or []
            if isinstance(e, dict)
        ),
        required_stages=tuple(
            (str(r.get("pipeline_id")), str(r["status_id"]))
            for r in data.get("required_statuses") or []
            if isinstance(r, dict) and "status_id" in r
        ),
    )


def loss_reason_from_api(data: dict[str, Any]) -> LossReason:
    return LossReason(id=str(data["id"]), name=str(data.get("name", "")))


def webhook_from_api(data: dict[str, Any]) -> WebhookSubscription:
    return WebhookSubscription(
        id=str(data.get("id", "")),
        url=str(data.get("destination", "")),
        events=tuple(str(s) for s in data.get("settings") or []),
        disabled=bool(data.get("disabled", False)),
    )


def custom_field_value(value: Any) -> list[dict[str, Any]] | None:
    """`values` for custom_fields_values: None clears the field; dicts pass through ({"enum_id": 5});
    lists give several values; anything else is one `value` (selects accept the option text)."""
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, dict):
            out.append(dict(item))
        elif isinstance(item, datetime):
            out.append({"value": int(item.timestamp())})
        elif isinstance(item, Decimal):
            out.append({"value": str(item)})
        else:
            out.append({"value": item})
    return out


# --- contacts -------------------------------------------------------------------------------------

# Codes of the contact fields every account has (PHPLIB MultitextCustomFieldValueModel users, DOC
# contacts-api examples): multitext values [{value, enum_id, enum_code}].
PHONE_CODE, EMAIL_CODE = "PHONE", "EMAIL"


def lead_contact_ids(lead: dict[str, Any]) -> list[tuple[str, bool]]:
    """A lead's `_embedded.contacts` (GET /api/v4/leads?with=contacts) as (id, is_main), main first."""
    rows = [c for c in embedded(lead, "contacts") if c.get("id") is not None]
    rows.sort(key=lambda c: not c.get("is_main"))
    return [(str(c["id"]), bool(c.get("is_main"))) for c in rows]


def _matches_field(cf: dict[str, Any], wanted: str) -> bool:
    """A custom field named by its id or (case-insensitively) its code."""
    return str(cf.get("field_id")) == wanted or str(cf.get("field_code") or "").upper() == wanted.upper()


def _values_of(contact: dict[str, Any], wanted: str) -> tuple[str, ...]:
    return tuple(
        str(v["value"])
        for cf in contact.get("custom_fields_values") or []  # null and [] alike
        if isinstance(cf, dict) and _matches_field(cf, wanted)
        for v in cf.get("values") or []
        if isinstance(v, dict) and v.get("value") not in (None, "")
    )


def contact_from_api(contact: dict[str, Any], *, is_primary: bool, telegram_field: str | None) -> ContactInfo:
    """A contact of GET /api/v4/contacts. amoCRM has no standard Telegram field: `telegram_field`
    (id or code of a contact field, a connection setting) names the one holding it, if any."""
    name = str(contact.get("name") or "").strip() or " ".join(
        str(contact[k]).strip() for k in ("first_name", "last_name") if contact.get(k)
    )
    telegram = _values_of(contact, telegram_field) if telegram_field else ()
    return ContactInfo(
        id=str(contact["id"]),
        name=name,
        phones=_values_of(contact, PHONE_CODE),
        emails=_values_of(contact, EMAIL_CODE),
        telegram=telegram[0] if telegram else None,
        is_primary=is_primary,
    )


def lead_values(values: Any) -> dict[str, Any]:
    """A lead's writable values by key: its own price, name, responsible_user_id and loss_reason_id by
    those names, any other key a custom field id (None clears) into custom_fields_values."""
    body: dict[str, Any] = {}
    custom = []
    for key, value in values.items():
        if key in ("price", "name", "responsible_user_id", "loss_reason_id"):
            body[key] = int(value) if key != "name" and value is not None else value
        else:
            custom.append({"field_id": int(key), "values": custom_field_value(value)})
    if custom:
        body["custom_fields_values"] = custom
    return body
