"""Lead validation and changes, shared by the API routes and the simulation endpoint.

Validation is all-or-nothing per request: any invalid item fails the whole request with 400 and
`validation-errors` naming the items by request_id, and nothing is saved (the 400 body carries no
saved entities; see the client's comment on how it resends the valid remainder).
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from connectors.amocrm.sandbox.common import is_int
from connectors.amocrm.sandbox.errors import Errors
from connectors.amocrm.sandbox.state import ENUM_TYPES, LOST, SandboxState

LeadEvent = tuple[str, dict[str, Any], dict[str, Any] | None]
_DATE_TYPES = ("date", "date_time", "birthday")
_NUMERIC_TYPES = ("numeric", "monetary", "price")


def lead_out(lead: dict[str, Any], base_url: str) -> dict[str, Any]:
    out = copy.deepcopy(lead)
    out["_links"] = {"self": {"href": f"{base_url}/api/v4/leads/{lead['id']}"}}
    out["_embedded"] = {"tags": [], "companies": []}
    return out


def _cf_value(
    errors: Errors, rid: str, path: str, field: dict[str, Any], value: Any
) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        errors.type(rid, path, "object")
        return None
    ftype = field["type"]
    if ftype in ENUM_TYPES:
        enums = field.get("enums") or []
        match = None
        if "enum_id" in value:
            match = next((e for e in enums if e["id"] == value["enum_id"]), None)
        elif "value" in value:
            match = next((e for e in enums if e["value"] == value["value"]), None)
        if match is None:
            errors.choice(rid, f"{path}.{'enum_id' if 'enum_id' in value else 'value'}")
            return None
        return {"value": match["value"], "enum_id": match["id"], "enum_code": None}
    raw = value.get("value")
    if ftype in _DATE_TYPES:
        if is_int(raw):
            return {"value": raw}
        if isinstance(raw, str):
            try:
                return {"value": int(datetime.fromisoformat(raw).timestamp())}
            except ValueError:
                pass
        errors.add(rid, f"{path}.value", "InvalidType", "This value is not a valid date.")
        return None
    if ftype == "checkbox":
        if isinstance(raw, bool):
            return {"value": raw}
        errors.type(rid, f"{path}.value", "bool")
        return None
    if ftype in _NUMERIC_TYPES:
        try:
            float(str(raw))
        except ValueError:
            errors.type(rid, f"{path}.value", "numeric")
            return None
        return {"value": str(raw)}
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        errors.type(rid, f"{path}.value", "string")
        return None
    return {"value": str(raw)}


def custom_values(
    state: SandboxState, errors: Errors, rid: str, raw: Any
) -> dict[int, list[dict[str, Any]] | None] | None:
    """Validated custom field values by field id (None = clear the field)."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        errors.type(rid, "custom_fields_values", "array")
        return None
    out: dict[int, list[dict[str, Any]] | None] = {}
    for i, entry in enumerate(raw):
        path = f"custom_fields_values.{i}"
        if not isinstance(entry, dict):
            errors.type(rid, path, "object")
            continue
        field = None
        if "field_id" in entry:
            field = state.field_by_id(entry["field_id"])
        elif "field_code" in entry:
            field = next((f for f in state.data["custom_fields"] if f["code"] == entry["field_code"]), None)
        if field is None:
            errors.choice(rid, f"{path}.field_id")
            continue
        values = entry.get("values")
        if values is None:
            out[field["id"]] = None
            continue
        if not isinstance(values, list):
            errors.type(rid, f"{path}.values", "array")
            continue
        parsed = [_cf_value(errors, rid, f"{path}.values.{j}", field, v) for j, v in enumerate(values)]
        out[field["id"]] = [p for p in parsed if p is not None]
    return out


def validate(
    state: SandboxState, errors: Errors, rid: str, item: dict[str, Any], lead: dict[str, Any] | None
) -> dict[int, list[dict[str, Any]] | None] | None:
    """Check one lead item (create when `lead` is None); returns its parsed custom values."""
    if "name" in item and not isinstance(item["name"], str):
        errors.type(rid, "name", "string")
    if "price" in item and (not is_int(item["price"]) or item["price"] < 0):
        errors.type(rid, "price", "int")
    pipeline = state.pipeline(item["pipeline_id"]) if "pipeline_id" in item else None
    if "pipeline_id" in item and pipeline is None:
        errors.choice(rid, "pipeline_id")
    if pipeline is None and "pipeline_id" not in item:
        pid = lead["pipeline_id"] if lead else next(p["id"] for p in state.pipelines if p["is_main"])
        pipeline = state.pipeline(pid)
    if "status_id" in item and pipeline is not None:
        status = state.status(pipeline, item["status_id"])
        # The unsorted (type 1) stage is reserved for incoming leads (/api/v4/leads/unsorted).
        if status is None or status["type"] == 1:
            errors.choice(rid, "status_id")
    for key in ("responsible_user_id", "created_by", "updated_by"):
        if (
            key in item
            and item[key] not in state.user_ids()
            and not (key != "responsible_user_id" and item[key] == 0)
        ):
            errors.choice(rid, key)
    if item.get("loss_reason_id") not in (None, 0) and not any(
        r["id"] == item["loss_reason_id"] for r in state.data["loss_reasons"]
    ):
        errors.choice(rid, "loss_reason_id")
    return custom_values(state, errors, rid, item.get("custom_fields_values"))


def apply(
    state: SandboxState,
    lead: dict[str, Any],
    item: dict[str, Any],
    values: dict[int, list[dict[str, Any]] | None],
    user: int,
) -> list[LeadEvent]:
    """Write a validated item into the lead; returns the webhook events the change produces."""
    old = copy.deepcopy(lead)
    for key in ("name", "price", "responsible_user_id"):
        if key in item:
            lead[key] = item[key]
    if "pipeline_id" in item:
        lead["pipeline_id"] = item["pipeline_id"]
        if "status_id" not in item:
            pipeline = state.pipeline(item["pipeline_id"])
            first = state.first_working_status(pipeline) if pipeline else None
            lead["status_id"] = first["id"] if first else lead["status_id"]
    if "status_id" in item:
        lead["status_id"] = item["status_id"]
    if "loss_reason_id" in item:
        lead["loss_reason_id"] = item["loss_reason_id"] or None
    if lead["status_id"] != LOST:
        lead["loss_reason_id"] = None
    if values:
        current = {cf["field_id"]: cf for cf in lead.get("custom_fields_values") or []}
        for field_id, parsed in values.items():
            field = state.field_by_id(field_id) or {}
            if not parsed:
                current.pop(field_id, None)
            else:
                current[field_id] = {
                    "field_id": field_id,
                    "field_name": field.get("name"),
                    "field_code": field.get("code"),
                    "field_type": field.get("type"),
                    "values": parsed,
                }
        lead["custom_fields_values"] = list(current.values()) or None
    watched = ("name", "price", "responsible_user_id", "pipeline_id", "status_id", "loss_reason_id")
    changed = any(old[k] != lead[k] for k in watched) or old.get("custom_fields_values") != lead.get(
        "custom_fields_values"
    )
    if not changed:
        return []
    state.touch(lead, user)
    events: list[LeadEvent] = [("update", lead, old)]
    if (old["status_id"], old["pipeline_id"]) != (lead["status_id"], lead["pipeline_id"]):
        events.append(("status", lead, old))
    if old["responsible_user_id"] != lead["responsible_user_id"]:
        events.append(("responsible", lead, old))
    return events


def create(
    state: SandboxState, item: dict[str, Any], values: dict[int, list[dict[str, Any]] | None], user: int
) -> tuple[dict[str, Any], list[LeadEvent]]:
    pipeline = state.pipeline(item["pipeline_id"]) if "pipeline_id" in item else None
    pipeline = pipeline or next(p for p in state.pipelines if p["is_main"])
    status_id = item.get("status_id")
    if status_id is None:
        first = state.first_working_status(pipeline)
        status_id = first["id"] if first else pipeline["_embedded"]["statuses"][0]["id"]
    lead = state.new_lead(str(item.get("name") or ""), pipeline["id"], status_id, user)
    rest = {k: v for k, v in item.items() if k not in ("pipeline_id", "status_id", "name")}
    apply(state, lead, rest, values, user)
    lead["updated_at"] = lead["created_at"]
    if lead["status_id"] in (142, 143):
        lead["closed_at"] = lead["created_at"]
    return lead, [("add", lead, None)]
