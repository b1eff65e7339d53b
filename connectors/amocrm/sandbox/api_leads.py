"""/api/v4/leads (list, bulk create, bulk update), lead custom fields and loss reasons."""

from __future__ import annotations

import copy
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from connectors.amocrm.sandbox import api_contacts
from connectors.amocrm.sandbox import leads as lead_logic
from connectors.amocrm.sandbox.common import array_body, base, is_int, json_body, sandbox, user_id
from connectors.amocrm.sandbox.errors import Errors, hal, no_content, not_found, request_ids
from connectors.amocrm.sandbox.paging import paged
from connectors.amocrm.sandbox.state import ENUM_TYPES, FIELD_TYPES, SandboxState

router = APIRouter()
_FILTER = re.compile(r"^filter((?:\[[^\]]*\])+)$")
_BRACKETS = re.compile(r"\[([^\]]*)\]")


def _filters(request: Request) -> dict[str, Any]:
    """filter[...] query keys as a nested dict; `[]` segments collect values under "0", "1", ..."""
    out: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        match = _FILTER.match(key)
        if not match:
            continue
        parts = _BRACKETS.findall(match.group(1))
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        last = parts[-1]
        node[last or str(len(node))] = value
    return out


def _ints(value: Any) -> set[int]:
    values = (
        value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
    )
    return {int(v) for v in values if str(v).lstrip("-").isdigit()}


def _range(lead_value: Any, spec: Any) -> bool:
    if lead_value is None:
        return False
    if isinstance(spec, dict):
        low, high = spec.get("from"), spec.get("to")
        return (low is None or lead_value >= int(low)) and (high is None or lead_value <= int(high))
    return bool(lead_value == int(spec))


def _matches(lead: dict[str, Any], f: dict[str, Any]) -> bool:
    if "id" in f and lead["id"] not in _ints(f["id"]):
        return False
    if "pipeline_id" in f and lead["pipeline_id"] not in _ints(f["pipeline_id"]):
        return False
    if "statuses" in f and isinstance(f["statuses"], dict):
        pairs = {
            (int(s.get("pipeline_id", -1)), int(s.get("status_id", -1)))
            for s in f["statuses"].values()
            if isinstance(s, dict)
            and str(s.get("pipeline_id", "")).isdigit()
            and str(s.get("status_id", "")).isdigit()
        }
        if (lead["pipeline_id"], lead["status_id"]) not in pairs:
            return False
    if "responsible_user_id" in f and lead["responsible_user_id"] not in _ints(f["responsible_user_id"]):
        return False
    for key in ("updated_at", "created_at", "closed_at"):
        if key in f and not _range(lead[key], f[key]):
            return False
    return True


@router.get("/api/v4/leads")
async def list_leads(request: Request) -> Response:
    state = sandbox(request).state
    flt = _filters(request)
    found = [lead for lead in state.leads.values() if not lead["is_deleted"] and _matches(lead, flt)]
    order = next(((k[6:-1], v) for k, v in request.query_params.items() if k.startswith("order[")), None)
    if order and order[0] in ("created_at", "updated_at", "id"):
        found.sort(key=lambda lead: (lead[order[0]], lead["id"]), reverse=order[1] == "desc")
    else:
        found.sort(key=lambda lead: lead["id"])
    return paged(request, found, "leads", render=lambda lead: _lead_out(request, state, lead))


def _lead_out(request: Request, state: SandboxState, lead: dict[str, Any]) -> dict[str, Any]:
    """A lead as answered; `with=contacts` adds `_embedded.contacts` [{id, is_main, _links}]."""
    out = lead_logic.lead_out(lead, base(request))
    if "contacts" in request.query_params.get("with", "").split(","):
        out["_embedded"]["contacts"] = api_contacts.embedded_contacts(state, lead["id"], base(request))
    return out


@router.get("/api/v4/leads/{lead_id:int}")
async def get_lead(request: Request, lead_id: int) -> Response:
    state = sandbox(request).state
    lead = state.leads.get(str(lead_id))
    if lead is None or lead["is_deleted"]:
        return no_content()
    return hal(_lead_out(request, state, lead))


@router.post("/api/v4/leads")
async def create_leads(request: Request) -> Response:
    box = sandbox(request)
    items = await array_body(request)
    rids = request_ids(items)
    errors = Errors()
    parsed = [
        lead_logic.validate(box.state, errors, rid, item, None) for rid, item in zip(rids, items, strict=True)
    ]
    linked = [
        api_contacts.linked_contact_ids(box.state, errors, rid, item)
        for rid, item in zip(rids, items, strict=True)
    ]
    if not box.state.config.partial_bulk_saves:  # that mode saves the valid items before the 400
        errors.raise_if_any()
    out, events = [], []
    for rid, item, values, contact_ids in zip(rids, items, parsed, linked, strict=True):
        if rid in errors.by_item:
            continue
        item = {k: v for k, v in item.items() if k != "_embedded"}
        lead, evs = lead_logic.create(box.state, item, values or {}, user_id(request))
        if contact_ids:
            api_contacts.link_contacts(box.state, lead["id"], contact_ids)
        events += evs
        out.append(
            {
                "id": lead["id"],
                "request_id": rid,
                "_links": lead_logic.lead_out(lead, base(request))["_links"],
            }
        )
    box.hooks.emit(events)
    errors.raise_if_any()
    return hal({"_links": {"self": {"href": base(request) + "/api/v4/leads"}}, "_embedded": {"leads": out}})


@router.patch("/api/v4/leads")
async def update_leads(request: Request) -> Response:
    box = sandbox(request)
    state = box.state
    items = await array_body(request)
    rids = request_ids(items)
    errors = Errors()
    parsed: list[dict[int, list[dict[str, Any]] | None] | None] = []
    for rid, item in zip(rids, items, strict=True):
        lead = state.leads.get(str(item.get("id"))) if is_int(item.get("id")) else None
        if lead is None or lead["is_deleted"]:
            errors.choice(rid, "id")
            parsed.append(None)
            continue
        parsed.append(lead_logic.validate(state, errors, rid, item, lead))
    errors.raise_if_any()
    out, events = [], []
    for rid, item, values in zip(rids, items, parsed, strict=True):
        lead = state.leads[str(item["id"])]
        events += lead_logic.apply(state, lead, item, values or {}, user_id(request))
        out.append(
            {
                "id": lead["id"],
                "updated_at": lead["updated_at"],
                "request_id": rid,
                "_links": {"self": {"href": f"{base(request)}/api/v4/leads/{lead['id']}"}},
            }
        )
    box.hooks.emit(events)
    return hal({"_links": {"self": {"href": base(request) + "/api/v4/leads"}}, "_embedded": {"leads": out}})


# --- custom fields --------------------------------------------------------------------------------

FIELDS = "/api/v4/leads/custom_fields"


def _field_out(field: dict[str, Any], href: str) -> dict[str, Any]:
    out = copy.deepcopy(field)
    out["_links"] = {"self": {"href": f"{href}/{field['id']}"}}
    return out


def _check_required(state: SandboxState, errors: Errors, rid: str, raw: Any) -> None:
    if not isinstance(raw, list):
        errors.type(rid, "required_statuses", "array")
        return
    for i, entry in enumerate(raw):
        pipeline = state.pipeline(entry.get("pipeline_id")) if isinstance(entry, dict) else None
        if pipeline is None:
            errors.choice(rid, f"required_statuses.{i}.pipeline_id")
        elif state.status(pipeline, entry.get("status_id")) is None:
            errors.choice(rid, f"required_statuses.{i}.status_id")


@router.get(FIELDS)
async def list_fields(request: Request) -> Response:
    state = sandbox(request).state
    fields = sorted(state.data["custom_fields"], key=lambda f: f["id"])
    href = base(request) + FIELDS
    # "The method returns up to 50 fields per request" although limit is documented up to 250.
    return paged(
        request, fields, "custom_fields", render=lambda f: _field_out(f, href), maximum=50, with_total=True
    )


@router.get(FIELDS + "/{field_id:int}")
async def get_field(request: Request, field_id: int) -> Response:
    field = sandbox(request).state.field_by_id(field_id)
    if field is None:
        return not_found("Custom field not found")
    return hal(_field_out(field, base(request) + FIELDS))


@router.post(FIELDS)
async def create_fields(request: Request) -> Response:
    state = sandbox(request).state
    items = await array_body(request)
    rids = request_ids(items)
    errors = Errors()
    for rid, item in zip(rids, items, strict=True):
        if not isinstance(item.get("name"), str) or not item["name"].strip():
            errors.blank(rid, "name")
        if item.get("type") not in FIELD_TYPES or item.get("type") == "tracking_data":
            errors.choice(rid, "type")
        elif item["type"] in ENUM_TYPES and not (isinstance(item.get("enums"), list) and item["enums"]):
            errors.blank(rid, "enums")
        if (
            "code" in item
            and item["code"] is not None
            and not re.fullmatch(r"[A-Za-z0-9_]{1,64}", str(item["code"]))
        ):
            errors.add(rid, "code", "InvalidValue", "This value is not valid.")
        if "required_statuses" in item:
            _check_required(state, errors, rid, item["required_statuses"])
    errors.raise_if_any()
    href = base(request) + FIELDS
    created = []
    for rid, item in zip(rids, items, strict=True):
        field = state.new_field(item)
        state.data["custom_fields"].append(field)
        out = _field_out(field, href)
        out["request_id"] = rid
        created.append(out)
    return hal({"_total_items": len(created), "_embedded": {"custom_fields": created}})


def _update_field(
    state: SandboxState, errors: Errors, rid: str, field: dict[str, Any], item: dict[str, Any]
) -> None:
    if "name" in item and (not isinstance(item["name"], str) or not item["name"].strip()):
        errors.blank(rid, "name")
    if "sort" in item and not is_int(item["sort"]):
        errors.type(rid, "sort", "int")
    if "type" in item and item["type"] != field["type"]:
        errors.choice(rid, "type")  # a field's type cannot change
    if "required_statuses" in item:
        _check_required(state, errors, rid, item["required_statuses"])


def _write_field(field: dict[str, Any], item: dict[str, Any]) -> None:
    for key in ("name", "sort", "is_api_only"):
        if key in item:
            field[key] = item[key]
    if "required_statuses" in item:
        field["required_statuses"] = [
            {"status_id": e["status_id"], "pipeline_id": e["pipeline_id"]} for e in item["required_statuses"]
        ]


@router.patch(FIELDS + "/{field_id:int}")
async def update_field(request: Request, field_id: int) -> Response:
    state = sandbox(request).state
    field = state.field_by_id(field_id)
    if field is None:
        return not_found("Custom field not found")
    item = await json_body(request)
    errors = Errors()
    if not isinstance(item, dict):
        errors.type("0", "", "object")
        errors.raise_if_any()
    _update_field(state, errors, "0", field, item)
    errors.raise_if_any()
    _write_field(field, item)
    return hal(_field_out(field, base(request) + FIELDS))


@router.patch(FIELDS)
async def update_fields(request: Request) -> Response:
    state = sandbox(request).state
    items = await array_body(request)
    rids = request_ids(items)
    errors = Errors()
    for rid, item in zip(rids, items, strict=True):
        field = state.field_by_id(item.get("id"))
        if field is None:
            errors.choice(rid, "id")
        else:
            _update_field(state, errors, rid, field, item)
    errors.raise_if_any()
    out = []
    for rid, item in zip(rids, items, strict=True):
        field = state.field_by_id(item["id"]) or {}
        _write_field(field, item)
        entry = _field_out(field, base(request) + FIELDS)
        entry["request_id"] = rid
        out.append(entry)
    return hal({"_total_items": len(out), "_embedded": {"custom_fields": out}})


# --- loss reasons ---------------------------------------------------------------------------------

REASONS = "/api/v4/leads/loss_reasons"


@router.get(REASONS)
async def list_loss_reasons(request: Request) -> Response:
    state = sandbox(request).state
    href = base(request) + REASONS
    return paged(
        request,
        state.data["loss_reasons"],
        "loss_reasons",
        render=lambda r: dict(r, _links={"self": {"href": f"{href}/{r['id']}"}}),
        with_total=True,
    )


@router.post(REASONS)
async def create_loss_reasons(request: Request) -> Response:
    state = sandbox(request).state
    items = await array_body(request)
    rids = request_ids(items)
    errors = Errors()
    for rid, item in zip(rids, items, strict=True):
        if not isinstance(item.get("name"), str) or not item["name"].strip():
            errors.blank(rid, "name")
        if "sort" in item and not is_int(item["sort"]):
            errors.type(rid, "sort", "int")
    errors.raise_if_any()
    href = base(request) + REASONS
    out = []
    for rid, item in zip(rids, items, strict=True):
        now = state.now()
        reason = {
            "id": state.next_id("loss_reason"),
            "name": item["name"].strip(),
            "sort": item.get("sort", 0),
            "created_at": now,
            "updated_at": now,
        }
        state.data["loss_reasons"].append(reason)
        out.append(dict(reason, request_id=rid, _links={"self": {"href": f"{href}/{reason['id']}"}}))
    return hal({"_total_items": len(out), "_embedded": {"loss_reasons": out}})
