"""Bitrix24 wire rows -> FunnelSync DTOs."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from connectors.base import (
    ContactInfo,
    CustomField,
    CustomFieldType,
    DealSnapshot,
    FieldOption,
    Pipeline,
    Stage,
    StageSemantics,
)

# Our field types -> USER_TYPE_ID (DOCS crm-deal-userfield-add.md).
USER_TYPES: dict[CustomFieldType, str] = {
    "string": "string",
    "text": "string",
    "number": "double",
    "money": "money",
    "date": "date",
    "datetime": "datetime",
    "enum": "enumeration",
    "boolean": "boolean",
    "url": "url",
}
DEAL_SELECT = ["*", "UF_*"]
# Multi-fields (PHONE, EMAIL, IM) come back only when named: "*" leaves them out (DOCS
# crm-contact-list.md, parameter select).
CONTACT_SELECT = ["ID", "NAME", "SECOND_NAME", "LAST_NAME", "PHONE", "EMAIL", "IM"]
# IM values of this VALUE_TYPE hold a Telegram account (CORE Multifield/Type/Im.php VALUE_TYPE_TELEGRAM).
TELEGRAM_VALUE_TYPE = "TELEGRAM"


def entity_id(pipeline_id: str) -> str:
    return "DEAL_STAGE" if str(pipeline_id) == "0" else f"DEAL_STAGE_{pipeline_id}"


def stage_id_for(pipeline_id: str, code: str) -> str:
    prefix = "" if str(pipeline_id) == "0" else f"C{pipeline_id}:"
    return code if (not prefix or code.startswith(prefix)) else prefix + code


def semantics_of(row: dict[str, Any]) -> StageSemantics:
    code = str(row.get("SEMANTICS") or "").upper()
    extra = row.get("EXTRA") if isinstance(row.get("EXTRA"), dict) else {}
    group = str((extra or {}).get("SEMANTICS") or "").lower()
    if code == "S" or group == "success":
        return "success"
    if code == "F" or group in ("failure", "apology"):
        return "failure"
    return "process"


def stage_from_row(row: dict[str, Any], pipeline_id: str) -> Stage:
    return Stage(
        id=str(row["STATUS_ID"]),
        pipeline_id=str(pipeline_id),
        name=str(row.get("NAME") or ""),
        sort=int(row.get("SORT") or 0),
        semantics=semantics_of(row),
        color=row.get("COLOR") or None,
        system=str(row.get("SYSTEM", "N")) == "Y",
        row_id=str(row["ID"]),
    )


def pipeline_from_row(row: dict[str, Any], stages: list[Stage]) -> Pipeline:
    return Pipeline(
        id=str(row["id"]),
        name=str(row.get("name") or ""),
        sort=int(row.get("sort") or 0),
        stages=tuple(sorted(stages, key=lambda s: (s.sort, int(s.row_id or 0)))),
        is_main=str(row.get("isDefault", "N")) == "Y",
    )


def field_from_row(row: dict[str, Any]) -> CustomField:
    name = str(row["FIELD_NAME"])
    label = row.get("EDIT_FORM_LABEL") or row.get("LIST_COLUMN_LABEL") or name
    if isinstance(label, dict):
        label = next(iter(label.values()), name)
    options = tuple(
        FieldOption(id=str(o["ID"]), value=str(o.get("VALUE", "")))
        for o in (row.get("LIST") or [])
        if isinstance(o, dict)
    )
    xml_id = row.get("XML_ID")
    code = str(xml_id) if xml_id else name.removeprefix("UF_CRM_").lower()
    return CustomField(
        id=str(row["ID"]),
        code=code,
        crm_name=name,
        name=str(label),
        type=str(row.get("USER_TYPE_ID") or ""),
        options=options,
    )


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def deal_from_row(row: dict[str, Any]) -> DealSnapshot:
    amount: Decimal | None
    try:
        amount = Decimal(str(row["OPPORTUNITY"])) if row.get("OPPORTUNITY") not in (None, "") else None
    except InvalidOperation:
        amount = None
    updated = parse_time(row.get("DATE_MODIFY")) or parse_time(row.get("DATE_CREATE")) or datetime.now(UTC)
    return DealSnapshot(
        id=str(row["ID"]),
        pipeline_id=str(row.get("CATEGORY_ID") or "0"),
        stage_id=str(row.get("STAGE_ID") or ""),
        title=str(row.get("TITLE") or ""),
        updated_at=updated,
        created_at=parse_time(row.get("DATE_CREATE")),
        amount=amount,
        currency=row.get("CURRENCY_ID") or None,
        responsible_id=str(row["ASSIGNED_BY_ID"]) if row.get("ASSIGNED_BY_ID") else None,
        closed=str(row.get("CLOSED", "N")) == "Y",
        fields={k: v for k, v in row.items() if k.startswith("UF_")},
    )


def _multi_values(row: dict[str, Any], type_id: str) -> list[dict[str, Any]]:
    """The multi-field entries [{ID, VALUE_TYPE, VALUE, TYPE_ID}] of one kind (DOCS crm_multifield)."""
    values = row.get(type_id)
    return [v for v in values if isinstance(v, dict) and v.get("VALUE")] if isinstance(values, list) else []


def contact_from_row(row: dict[str, Any], *, is_primary: bool) -> ContactInfo:
    """A crm.contact.list row selected with CONTACT_SELECT."""
    name = " ".join(str(row[k]).strip() for k in ("NAME", "SECOND_NAME", "LAST_NAME") if row.get(k))
    telegram = next(
        (
            str(v["VALUE"])
            for v in _multi_values(row, "IM")
            if str(v.get("VALUE_TYPE") or "").upper() == TELEGRAM_VALUE_TYPE
        ),
        None,
    )
    return ContactInfo(
        id=str(row["ID"]),
        name=name,
        phones=tuple(str(v["VALUE"]) for v in _multi_values(row, "PHONE")),
        emails=tuple(str(v["VALUE"]) for v in _multi_values(row, "EMAIL")),
        telegram=telegram,
        is_primary=is_primary,
    )


def bindings_in_order(rows: Any) -> list[tuple[str, bool]]:
    """crm.deal.contact.items.get rows [{CONTACT_ID, SORT, ROLE_ID, IS_PRIMARY}] as (contact id,
    primary), the primary first and the rest by SORT as the deal card shows them."""
    items = [r for r in rows or [] if isinstance(r, dict) and r.get("CONTACT_ID") not in (None, "")]
    items.sort(key=lambda r: (str(r.get("IS_PRIMARY")) != "Y", int(r.get("SORT") or 0)))
    return [(str(r["CONTACT_ID"]), str(r.get("IS_PRIMARY")) == "Y") for r in items]
