"""/api/v4/contacts (list, one, bulk create) and the lead-contact links (docs/crm/amocrm.md §8).

A contact keeps `custom_fields_values` in the API's shape: the predefined multitext fields PHONE and
EMAIL hold [{value, enum_id, enum_code}], other fields [{value}]. Links live beside the leads in
`lead_contacts` (lead id -> [{id, is_main}]) and come back as a lead's `_embedded.contacts` when the
lead list is asked `with=contacts`. State of accounts saved before contacts existed is filled in on
first use.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from connectors.amocrm.sandbox.common import array_body, base, is_int, json_body, sandbox, user_id
from connectors.amocrm.sandbox.errors import Errors, hal, no_content, not_found, request_ids
from connectors.amocrm.sandbox.state import MANAGER_ID, SandboxState

router = APIRouter()
CONTACTS = "/api/v4/contacts"
# The contact fields a new account has, with their enum codes (DOC contacts-api examples, PHPLIB
# sample code: WORK/MOB for phones, WORK/PRIV for e-mail; the complete lists are UNVERIFIED).
PREDEFINED = (
    ("Телефон", "PHONE", ("WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER")),
    ("Email", "EMAIL", ("WORK", "PRIV", "OTHER")),
)


# --- state ------------------------------------------------------------------------------------------


def _next_id(state: SandboxState, kind: str, first: int) -> int:
    state.data["ids"].setdefault(kind, first)
    return state.next_id(kind)


def contact_fields(state: SandboxState) -> list[dict[str, Any]]:
    """The account's contact custom fields; PHONE and EMAIL exist from the start."""
    fields: list[dict[str, Any]] = state.data.setdefault("contact_fields", [])
    if not fields:
        for name, code, enums in PREDEFINED:
            fields.append(new_contact_field(state, name, "multitext", code, enums))
    return fields


def new_contact_field(
    state: SandboxState, name: str, field_type: str, code: str | None, enums: tuple[str, ...] = ()
) -> dict[str, Any]:
    return {
        "id": _next_id(state, "contact_field", 300_001),
        "name": name,
        "type": field_type,
        "code": code,
        "entity_type": "contacts",
        "enums": [
            {"id": _next_id(state, "enum", 500_001), "value": e, "sort": (i + 1) * 2}
            for i, e in enumerate(enums)
        ]
        or None,
    }


def contacts_of(state: SandboxState) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = state.data.setdefault("contacts", {})
    return result


def links_of(state: SandboxState, lead_id: int) -> list[dict[str, Any]]:
    """A lead's contacts [{id, is_main}], the main one first."""
    links: dict[str, list[dict[str, Any]]] = state.data.setdefault("lead_contacts", {})
    return list(links.get(str(lead_id), []))


def link_contacts(
    state: SandboxState, lead_id: int, contact_ids: list[int], *, main: int | None = None
) -> None:
    """Add links; `main` (or, when the lead had none, the first one linked) becomes the main contact."""
    links: dict[str, list[dict[str, Any]]] = state.data.setdefault("lead_contacts", {})
    rows = links.setdefault(str(lead_id), [])
    for contact_id in contact_ids:
        if not any(r["id"] == contact_id for r in rows):
            rows.append({"id": contact_id, "is_main": False})
    chosen = (
        main
        if main is not None
        else next((r["id"] for r in rows if r["is_main"]), contact_ids[0] if contact_ids else None)
    )
    for row in rows:
        row["is_main"] = row["id"] == chosen
    rows.sort(key=lambda r: not r["is_main"])


def embedded_contacts(state: SandboxState, lead_id: int, href: str) -> list[dict[str, Any]]:
    """`_embedded.contacts` of a lead asked `with=contacts`: {id, is_main, _links} per contact."""
    return [
        {"id": r["id"], "is_main": r["is_main"], "_links": {"self": {"href": f"{href}{CONTACTS}/{r['id']}"}}}
        for r in links_of(state, lead_id)
    ]


# --- validation -------------------------------------------------------------------------------------


def _field_for(state: SandboxState, entry: dict[str, Any]) -> dict[str, Any] | None:
    fields = contact_fields(state)
    if "field_id" in entry:
        return next((f for f in fields if f["id"] == entry["field_id"]), None)
    return next((f for f in fields if f["code"] and f["code"] == entry.get("field_code")), None)


def _value(errors: Errors, rid: str, path: str, field: dict[str, Any], value: Any) -> dict[str, Any] | None:
    raw = value.get("value") if isinstance(value, dict) else None
    if not isinstance(raw, str | int) or isinstance(raw, bool) or str(raw).strip() == "":
        errors.type(rid, f"{path}.value", "string")
        return None
    if field["type"] != "multitext":
        return {"value": str(raw)}
    enums = field.get("enums") or []
    code = value.get("enum_code")
    enum = next((e for e in enums if e["value"] == code or e["id"] == value.get("enum_id")), None)
    if enum is None and (code is not None or "enum_id" in value):
        errors.choice(rid, f"{path}.enum_code")
        return None
    enum = enum or enums[0]
    return {"value": str(raw), "enum_id": enum["id"], "enum_code": enum["value"]}


def contact_values(state: SandboxState, errors: Errors, rid: str, raw: Any) -> list[dict[str, Any]]:
    """Validated custom_fields_values of a contact, in the shape it is stored and answered."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.type(rid, "custom_fields_values", "array")
        return []
    out = []
    for i, entry in enumerate(raw):
        path = f"custom_fields_values.{i}"
        field = _field_for(state, entry) if isinstance(entry, dict) else None
        if field is None or not isinstance(entry.get("values"), list):
            errors.choice(rid, f"{path}.field_id")
            continue
        values = [_value(errors, rid, f"{path}.values.{j}", field, v) for j, v in enumerate(entry["values"])]
        out.append(
            {
                "field_id": field["id"],
                "field_name": field["name"],
                "field_code": field["code"],
                "field_type": field["type"],
                "values": [v for v in values if v is not None],
            }
        )
    return out


def linked_contact_ids(state: SandboxState, errors: Errors, rid: str, item: dict[str, Any]) -> list[int]:
    """`_embedded.contacts` [{id}] of a lead being created: each must be an existing contact, or the
    item fails with the documented validation-errors shape (path and code UNVERIFIED)."""
    raw = (item.get("_embedded") or {}).get("contacts") if isinstance(item.get("_embedded"), dict) else None
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.type(rid, "_embedded.contacts", "array")
        return []
    ids = []
    for i, entry in enumerate(raw):
        contact_id = entry.get("id") if isinstance(entry, dict) else None
        if (
            not isinstance(contact_id, int)
            or not is_int(contact_id)
            or str(contact_id) not in contacts_of(state)
        ):
            errors.choice(rid, f"_embedded.contacts.{i}.id")
            continue
        ids.append(contact_id)
    return ids


# --- creation and output ----------------------------------------------------------------------------


def create_contact(
    state: SandboxState, item: dict[str, Any], values: list[dict[str, Any]], user: int
) -> dict[str, Any]:
    now = state.now()
    first, last = str(item.get("first_name") or ""), str(item.get("last_name") or "")
    contact = {
        "id": _next_id(state, "contact", 10_000_001),
        "name": str(item.get("name") or f"{first} {last}".strip()),
        "first_name": first,
        "last_name": last,
        "responsible_user_id": item.get("responsible_user_id") or user,
        "group_id": 0,
        "created_by": user,
        "updated_by": user,
        "created_at": now,
        "updated_at": now,
        "closest_task_at": None,
        "is_deleted": False,
        "is_unsorted": False,
        "custom_fields_values": values or None,
        "account_id": state.config.account_id,
    }
    contacts_of(state)[str(contact["id"])] = contact
    return contact


def contact_out(contact: dict[str, Any], href: str) -> dict[str, Any]:
    out = copy.deepcopy(contact)
    out["_links"] = {"self": {"href": f"{href}{CONTACTS}/{contact['id']}"}}
    out["_embedded"] = {"tags": [], "companies": []}
    return out


# --- routes -----------------------------------------------------------------------------------------


def _ids_filter(request: Request) -> set[int] | None:
    values = [v for k, v in request.query_params.multi_items() if k.startswith("filter[id]")]
    return {int(v) for v in values if v.lstrip("-").isdigit()} if values else None


@router.get(CONTACTS)
async def list_contacts(request: Request) -> Response:
    state = sandbox(request).state
    try:
        page = max(1, int(request.query_params.get("page", "1")))
        limit = min(250, max(1, int(request.query_params.get("limit", "50"))))
    except ValueError:
        page, limit = 1, 50
    ids = _ids_filter(request)
    found = sorted(
        (c for c in contacts_of(state).values() if not c["is_deleted"] and (ids is None or c["id"] in ids)),
        key=lambda c: int(c["id"]),
    )
    chunk = found[(page - 1) * limit : page * limit]
    if not chunk:
        return no_content()  # an empty list is 204 with no body
    href = base(request)
    links: dict[str, Any] = {"self": {"href": str(request.url)}}
    if len(found) > page * limit:
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "page"] + [
            ("page", str(page + 1))
        ]
        links["next"] = {"href": href + CONTACTS + "?" + "&".join(f"{k}={v}" for k, v in query)}
    return hal(
        {"_page": page, "_links": links, "_embedded": {"contacts": [contact_out(c, href) for c in chunk]}}
    )


@router.get(CONTACTS + "/{contact_id:int}")
async def get_contact(request: Request, contact_id: int) -> Response:
    contact = contacts_of(sandbox(request).state).get(str(contact_id))
    if contact is None or contact["is_deleted"]:
        return no_content()
    return hal(contact_out(contact, base(request)))


@router.post(CONTACTS)
async def create_contacts(request: Request) -> Response:
    state = sandbox(request).state
    items = await array_body(request)
    rids = request_ids(items)
    errors = Errors()
    parsed = [
        contact_values(state, errors, rid, item.get("custom_fields_values"))
        for rid, item in zip(rids, items, strict=True)
    ]
    errors.raise_if_any()
    href = base(request)
    out = []
    for rid, item, values in zip(rids, items, parsed, strict=True):
        contact = create_contact(state, item, values, user_id(request))
        out.append({"id": contact["id"], "request_id": rid, "_links": contact_out(contact, href)["_links"]})
    return hal({"_links": {"self": {"href": href + CONTACTS}}, "_embedded": {"contacts": out}})


# --- control: what a manager or an admin does in the UI ---------------------------------------------


@router.post("/_sandbox/contact_fields")
async def add_contact_field(request: Request) -> Response:
    """An admin adds a contact field ({"name", "type": "text", "code"}), e.g. one for Telegram."""
    state = sandbox(request).state
    body = await json_body(request)
    if not isinstance(body, dict) or not str(body.get("name") or "").strip():
        return JSONResponse({"error": "name is required"}, status_code=400)
    field = new_contact_field(state, str(body["name"]), str(body.get("type") or "text"), body.get("code"))
    contact_fields(state).append(field)
    return JSONResponse(field, status_code=201)


@router.post("/_sandbox/contacts")
async def add_contact(request: Request) -> Response:
    """A manager adds a client ({"name", "custom_fields_values"}) and, with "lead_id", links it to
    that lead ("is_main": make it the lead's main contact). Same validation as the API."""
    state = sandbox(request).state
    body = await json_body(request)
    if not isinstance(body, dict):
        return JSONResponse({"error": "body must be a contact object"}, status_code=400)
    lead_id = body.get("lead_id")
    if lead_id is not None and str(lead_id) not in state.leads:
        return not_found("Lead not found")
    errors = Errors()
    values = contact_values(state, errors, "0", body.get("custom_fields_values"))
    errors.raise_if_any()
    contact = create_contact(state, body, values, MANAGER_ID)
    if lead_id is not None:
        main = contact["id"] if body.get("is_main") else None
        link_contacts(state, int(lead_id), [contact["id"]], main=main)
    return JSONResponse(contact_out(contact, base(request)), status_code=201)
