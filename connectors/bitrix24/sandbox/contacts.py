"""Sandbox contacts and deal-contact bindings: crm.contact.* and crm.deal.contact.* (docs/crm/bitrix24.md §7).

Contacts keep the multi-fields PHONE, EMAIL, WEB, IM as lists of {ID, VALUE_TYPE, VALUE, TYPE_ID}
(DOCS data-types.md crm_multifield). crm.contact.list leaves them out unless the select names them
("*" does not cover them, DOCS crm-contact-list.md); crm.contact.get returns the non-empty ones.
"""

from __future__ import annotations

from typing import Any

from connectors.bitrix24.sandbox.api import ApiError, Context, Result, bad

PAGE = 50
MULTI_FIELDS = ("PHONE", "EMAIL", "WEB", "IM")
_SCALARS = ("NAME", "SECOND_NAME", "LAST_NAME", "POST", "COMMENTS", "ORIGINATOR_ID", "ORIGIN_ID")
_OPS = ("!@", ">=", "<=", "!=", ">", "<", "@", "!", "=")


def _positive(value: Any, message: str) -> int:
    """A positive integer parameter, or the given error (texts from the methods' DOCS tables)."""
    try:
        number = int(str(value))
    except ValueError:
        raise bad(message) from None
    if number < 1:
        raise bad(message)
    return number


# --- contacts -------------------------------------------------------------------------------------


def _multi_values(ctx: Context, type_id: str, raw: Any) -> list[dict[str, Any]]:
    """Multi-field input [{VALUE, VALUE_TYPE}] as stored rows with an ID and the TYPE_ID."""
    if raw in (None, ""):
        return []
    if not isinstance(raw, list):
        raise bad(f"Expected iterable value for multiple field, but got {type(raw).__name__} instead", "100")
    rows = []
    for entry in raw:
        if not isinstance(entry, dict) or not str(entry.get("VALUE") or "").strip():
            continue  # an empty value is dropped, as in the contact card
        rows.append(
            {
                "ID": str(ctx.state.next_id("multifield")),
                "VALUE_TYPE": str(entry.get("VALUE_TYPE") or "WORK"),
                "VALUE": str(entry["VALUE"]),
                "TYPE_ID": type_id,
            }
        )
    return rows


def create_contact(ctx: Context, fields: dict[str, Any]) -> dict[str, Any]:
    contact_id = ctx.state.next_id("contact")
    now = ctx.clock.now()
    contact: dict[str, Any] = {
        "ID": contact_id,
        **{key: str(fields[key]) for key in _SCALARS if fields.get(key) not in (None, "")},
        "ASSIGNED_BY_ID": str(fields.get("ASSIGNED_BY_ID") or ctx.user_id),
        "DATE_CREATE": now,
        "DATE_MODIFY": now,
    }
    for type_id in MULTI_FIELDS:
        values = _multi_values(ctx, type_id, fields.get(type_id))
        if values:
            contact[type_id] = values
    ctx.state.contacts[contact_id] = contact
    ctx.touch()
    return contact


def contact_add(ctx: Context, params: dict[str, Any]) -> Result:
    fields = params.get("fields")
    if not isinstance(fields, dict):
        raise bad("Parameter 'fields' must be array.", "INVALID_ARG_VALUE")
    return Result(create_contact(ctx, fields)["ID"])


def _contact_out(contact: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    """List/get shape: scalars as strings; multi-fields only when named (or always, for get)."""
    wanted = select or ["*", "UF_*"]
    out: dict[str, Any] = {}
    for key, value in contact.items():
        if key in MULTI_FIELDS:
            if key in wanted:
                out[key] = [dict(v) for v in value]
        elif key in wanted or "*" in wanted:
            out[key] = None if value is None else str(value)
    out["ID"] = str(contact["ID"])
    return out


def contact_get(ctx: Context, params: dict[str, Any]) -> Result:
    contact_id = _positive(params.get("id", params.get("ID", "")), "ID is not defined or invalid.")
    contact = ctx.state.contacts.get(contact_id)
    if contact is None:
        raise bad("Not found")
    return Result(_contact_out(contact, ["*", *MULTI_FIELDS]))


def _matches(contact: dict[str, Any], filters: dict[str, Any]) -> bool:
    """Exact-match filters (with IN, NOT IN and comparisons on ID); a multi-field matches when one of
    its values equals the filter (DOCS crm-contact-list.md: multi-fields filter on exact values)."""
    for raw_key, expected in filters.items():
        op = next((o for o in _OPS if raw_key.startswith(o)), "")
        name = raw_key[len(op) :].upper()
        if name in MULTI_FIELDS:
            actual_values = [str(v["VALUE"]) for v in contact.get(name) or []]
        else:
            actual_values = [str(contact.get(name) if contact.get(name) is not None else "")]
        wanted = [str(v) for v in expected] if isinstance(expected, list) else [str(expected)]
        if op in (">", ">=", "<", "<=") and name == "ID":
            bound = int(wanted[0])
            ok = {">": contact["ID"] > bound, ">=": contact["ID"] >= bound,
                  "<": contact["ID"] < bound, "<=": contact["ID"] <= bound}[op]  # fmt: skip
            if not ok:
                return False
            continue
        hit = any(value in wanted for value in actual_values)
        if hit == (op in ("!@", "!", "!=")):
            return False
    return True


def contact_list(ctx: Context, params: dict[str, Any]) -> Result:
    filters = params.get("filter") or {}
    select = params.get("select")
    if not isinstance(filters, dict):
        raise bad("Invalid parameters.", "INVALID_ARG_VALUE")
    rows = sorted(
        (c for c in ctx.state.contacts.values() if _matches(c, filters)), key=lambda c: int(c["ID"])
    )
    start_raw = params.get("start", 0)
    start = int(str(start_raw)) if str(start_raw).lstrip("-").isdigit() else 0
    if start == -1:
        return Result([_contact_out(c, select if isinstance(select, list) else None) for c in rows[:PAGE]])
    start = max(start, 0)
    page = rows[start : start + PAGE]
    nxt = start + PAGE if start + PAGE < len(rows) else None
    return Result(
        [_contact_out(c, select if isinstance(select, list) else None) for c in page], len(rows), nxt
    )


# --- deal-contact bindings ------------------------------------------------------------------------


def bindings_of(ctx: Context, deal_id: int) -> list[dict[str, Any]]:
    return list(ctx.state.deal_contacts.get(deal_id, []))


def bind_contacts(ctx: Context, deal_id: int, contact_ids: list[int]) -> None:
    """Replace a deal's bindings (contactIds on crm.item.add/update): the first is the primary, SORT
    10, 20, ... in the given order."""
    ctx.state.deal_contacts[deal_id] = [
        {"CONTACT_ID": cid, "SORT": (i + 1) * 10, "ROLE_ID": 0, "IS_PRIMARY": "Y" if i == 0 else "N"}
        for i, cid in enumerate(dict.fromkeys(contact_ids))
    ]
    ctx.touch()


def add_binding(ctx: Context, deal_id: int, contact_id: int, *, primary: bool, sort: int | None) -> bool:
    """crm.deal.contact.add: False when the contact is bound already. A deal always has one primary
    contact (DOCS crm-deal-contact-fields.md): the first binding is primary whatever was asked."""
    rows = ctx.state.deal_contacts.setdefault(deal_id, [])
    if any(int(r["CONTACT_ID"]) == contact_id for r in rows):
        return False
    primary = primary or not rows
    if primary:
        for row in rows:
            row["IS_PRIMARY"] = "N"
    next_sort = max((int(r["SORT"]) for r in rows), default=0) + 10
    rows.append(
        {
            "CONTACT_ID": contact_id,
            "SORT": sort or next_sort,
            "ROLE_ID": 0,
            "IS_PRIMARY": "Y" if primary else "N",
        }
    )
    ctx.touch()
    return True


def check_contact_ids(ctx: Context, raw: Any) -> list[int]:
    """contactIds given to crm.item.add/update. A list of existing contact ids, else the documented
    field error (DOCS crm-item-add.md: CRM_FIELD_ERROR_VALUE_NOT_VALID). Whether a real portal
    checks that the contacts exist is UNVERIFIED; the sandbox does, so a bad id is visible."""
    values = raw if isinstance(raw, list) else [raw]
    try:
        ids = [int(str(v)) for v in values if str(v) != ""]
    except ValueError:
        ids = []
        values = [None]
    if len(ids) != len([v for v in values if str(v) != ""]) or any(i not in ctx.state.contacts for i in ids):
        raise ApiError(400, "CRM_FIELD_ERROR_VALUE_NOT_VALID", 'Invalid value for field "Contacts"')
    return ids


def _deal_id(ctx: Context, params: dict[str, Any]) -> int:
    deal_id = _positive(
        params.get("id", params.get("ID", "")), "The parameter ownerEntityID is invalid or not defined."
    )
    if deal_id not in ctx.state.deals:
        raise bad("Not found.")
    return deal_id


def deal_contact_items_get(ctx: Context, params: dict[str, Any]) -> Result:
    """[{CONTACT_ID, SORT, ROLE_ID, IS_PRIMARY}] as integers and "Y"/"N" (DOCS example)."""
    return Result(bindings_of(ctx, _deal_id(ctx, params)))


def deal_contact_add(ctx: Context, params: dict[str, Any]) -> Result:
    deal_id = _deal_id(ctx, params)
    fields = params.get("fields")
    if not isinstance(fields, dict):
        raise bad("The parameter 'fields' must be array.")
    try:
        contact_id = int(str(fields.get("CONTACT_ID", "")))
    except ValueError:
        contact_id = 0
    if contact_id <= 0:
        raise bad("The parameter 'fields' is not valid.")
    sort = int(str(fields["SORT"])) if str(fields.get("SORT", "")).isdigit() else None
    return Result(
        add_binding(ctx, deal_id, contact_id, primary=str(fields.get("IS_PRIMARY")) == "Y", sort=sort)
    )


HANDLERS = {
    "crm.contact.add": contact_add,
    "crm.contact.get": contact_get,
    "crm.contact.list": contact_list,
    "crm.deal.contact.items.get": deal_contact_items_get,
    "crm.deal.contact.add": deal_contact_add,
}
