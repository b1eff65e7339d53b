"""Sandbox deals: legacy crm.deal.* (UPPER_SNAKE, string values) and crm.item.* (entityTypeId 2)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from connectors.bitrix24.sandbox import contacts
from connectors.bitrix24.sandbox.api import ApiError, Context, Result, bad
from connectors.bitrix24.sandbox.state import PortalState

PAGE = 50
_OPS = ("!@", ">=", "<=", "!=", "=%", "%=", ">", "<", "@", "!", "=", "%")
_NUMERIC = {"ID", "CATEGORY_ID", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID", "OPPORTUNITY"}
_DATES = {"DATE_CREATE", "DATE_MODIFY", "MOVED_TIME", "CLOSEDATE", "BEGINDATE"}
_READONLY = {
    "ID",
    "DATE_CREATE",
    "DATE_MODIFY",
    "CATEGORY_ID",
    "MOVED_BY_ID",
    "MOVED_TIME",
    "STAGE_SEMANTIC_ID",
}
# crm.item field names for the legacy deal columns we keep (DOCS crm-item-* / crm-deal-* tables).
ITEM_NAMES = {
    "ID": "id",
    "TITLE": "title",
    "TYPE_ID": "typeId",
    "CATEGORY_ID": "categoryId",
    "STAGE_ID": "stageId",
    "STAGE_SEMANTIC_ID": "stageSemanticId",
    "IS_NEW": "isNew",
    "OPPORTUNITY": "opportunity",
    "CURRENCY_ID": "currencyId",
    "ASSIGNED_BY_ID": "assignedById",
    "CREATED_BY_ID": "createdBy",
    "MODIFY_BY_ID": "updatedBy",
    "DATE_CREATE": "createdTime",
    "DATE_MODIFY": "updatedTime",
    "MOVED_BY_ID": "movedBy",
    "MOVED_TIME": "movedTime",
    "CLOSED": "closed",
    "CLOSEDATE": "closedate",
    "BEGINDATE": "begindate",
    "COMMENTS": "comments",
    "ORIGINATOR_ID": "originatorId",
    "ORIGIN_ID": "originId",
}
LEGACY_NAMES = {v: k for k, v in ITEM_NAMES.items()}


def uf_to_camel(name: str) -> str:
    """UF_CRM_EXT_ID -> ufCrmExtId; UF_CRM_1721244482250 -> ufCrm_1721244482250 (crm.item naming)."""
    parts = name.split("_")[2:]
    out = "ufCrm"
    for part in parts:
        out += f"_{part}" if part.isdigit() else part[:1].upper() + part[1:].lower()
    return out


def camel_to_legacy(name: str, state: PortalState) -> str:
    if name in LEGACY_NAMES:
        return LEGACY_NAMES[name]
    if name.startswith("ufCrm"):
        for uf in state.userfields.values():
            if uf_to_camel(uf["FIELD_NAME"]) == name:
                return str(uf["FIELD_NAME"])
    return name


def _semantic(state: PortalState, category_id: int, stage_id: str) -> str:
    row = state.stage(category_id, stage_id)
    if row is None or row["SEMANTICS"] is None:
        return "P"
    return str(row["SEMANTICS"])


def _as_int(value: Any, what: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise bad(f"{what} is not defined or invalid.") from None


# --- filtering ------------------------------------------------------------------------------------


def _compare_value(field: str, value: Any, ctx: Context) -> Any:
    if field in _NUMERIC:
        try:
            return Decimal(str(value)) if str(value).strip() != "" else Decimal(0)
        except InvalidOperation:
            return Decimal(0)
    if field in _DATES:
        return ctx.clock.parse(value)
    return str(value)


def _matches(deal: dict[str, Any], filters: dict[str, Any], ctx: Context) -> bool:
    for raw_key, expected in filters.items():
        op = next((o for o in _OPS if raw_key.startswith(o)), "")
        field = raw_key[len(op) :].upper() if not raw_key[len(op) :].startswith("UF_") else raw_key[len(op) :]
        actual_raw = deal.get(field)
        if op in ("@", "!@") or isinstance(expected, list):
            values = expected if isinstance(expected, list) else [expected]
            hit = any(str(actual_raw) == str(v) for v in values)
            if hit == (op == "!@" or op == "!"):
                return False
            continue
        if op in ("%", "=%", "%="):
            if str(expected).lower().strip("%") not in str(actual_raw or "").lower():
                return False
            continue
        actual = _compare_value(field, actual_raw, ctx)
        wanted = _compare_value(field, expected, ctx)
        if actual is None or wanted is None:
            if op in ("", "="):
                if str(actual_raw or "") != str(expected):
                    return False
                continue
            return False
        ok = {
            "": actual == wanted,
            "=": actual == wanted,
            "!": actual != wanted,
            "!=": actual != wanted,
            ">": actual > wanted,
            ">=": actual >= wanted,
            "<": actual < wanted,
            "<=": actual <= wanted,
        }[op]
        if not ok:
            return False
    return True


def _ordered(rows: list[dict[str, Any]], order: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    for field, direction in reversed(list(order.items())):
        key_field = field.upper() if not field.startswith("UF_") else field

        def key(deal: dict[str, Any], f: str = key_field) -> tuple[bool, Any]:
            return (_compare_value(f, deal.get(f), ctx) is None, _sort_key(f, deal, ctx))

        rows.sort(key=key, reverse=str(direction).upper() == "DESC")
    return rows


def _sort_key(field: str, deal: dict[str, Any], ctx: Context) -> Any:
    value = _compare_value(field, deal.get(field), ctx)
    if value is None:
        return 0
    return value.timestamp() if hasattr(value, "timestamp") else value


def _select(deal: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    wanted = select or ["*", "UF_*"]
    out: dict[str, Any] = {}
    for key, value in deal.items():
        if key.startswith("_"):
            continue
        is_uf = key.startswith("UF_")
        if key in wanted or ("*" in wanted and not is_uf) or ("UF_*" in wanted and is_uf):
            out[key] = None if value is None else (value if isinstance(value, list) else str(value))
    if "ID" not in out:
        out["ID"] = str(deal["ID"])
    return out


def query_deals(ctx: Context, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int | None, int | None]:
    """The list engine shared by crm.deal.list and crm.item.list: filter, order, page of 50."""
    filters = params.get("filter") or {}
    order = params.get("order") or {}
    if not isinstance(filters, dict) or not isinstance(order, dict):
        raise bad("Invalid parameters.", "INVALID_ARG_VALUE")
    rows = [d for d in ctx.state.deals.values() if _matches(d, filters, ctx)]
    rows = _ordered(rows, order, ctx)
    start_raw = params.get("start", 0)
    start = _as_int(start_raw if start_raw not in (None, "") else 0, "start")
    if start == -1:
        # Fast mode (DOCS list-methods-pecularities.md): no total, no next, first 50 rows.
        return rows[:PAGE], 0, None
    start = max(start, 0)
    page = rows[start : start + PAGE]
    nxt = start + PAGE if start + PAGE < len(rows) else None
    return page, len(rows), nxt


# --- legacy crm.deal.* ----------------------------------------------------------------------------


def deal_list(ctx: Context, params: dict[str, Any]) -> Result:
    select = params.get("select")
    page, total, nxt = query_deals(ctx, params)
    return Result([_select(d, select if isinstance(select, list) else None) for d in page], total, nxt)


def deal_get(ctx: Context, params: dict[str, Any]) -> Result:
    deal = ctx.state.deals.get(_as_int(params.get("id", params.get("ID", "")), "ID"))
    if deal is None:
        raise bad("Not found", "NOT_FOUND")
    return Result(_select(deal, None))


def _clean_value(value: Any) -> Any:
    if isinstance(value, list):
        return [str(v) for v in value]
    return "" if value is None else str(value)


def create_deal(ctx: Context, fields: dict[str, Any], *, by_user: int, emit: bool = True) -> dict[str, Any]:
    state = ctx.state
    category_id = _as_int(fields.get("CATEGORY_ID", 0) or 0, "CATEGORY_ID")
    if category_id not in state.categories:
        category_id = 0
    stages = state.stages_of(category_id)
    stage_id = str(fields.get("STAGE_ID") or "")
    if state.stage(category_id, stage_id) is None:
        stage_id = stages[0]["STATUS_ID"]  # default: first stage of the funnel (DOCS crm-deal-add)
    now = ctx.clock.now()
    deal_id = state.next_id("deal")
    deal: dict[str, Any] = {
        "ID": deal_id,
        "TITLE": str(fields.get("TITLE") or f"Deal #{deal_id}"),
        "TYPE_ID": str(fields.get("TYPE_ID") or "SALE"),
        "CATEGORY_ID": category_id,
        "STAGE_ID": stage_id,
        "STAGE_SEMANTIC_ID": _semantic(state, category_id, stage_id),
        "IS_NEW": "Y",
        "OPPORTUNITY": f"{Decimal(str(fields.get('OPPORTUNITY') or 0)):.2f}",
        "CURRENCY_ID": str(fields.get("CURRENCY_ID") or "RUB"),
        "ASSIGNED_BY_ID": str(fields.get("ASSIGNED_BY_ID") or by_user),
        "CREATED_BY_ID": str(by_user),
        "MODIFY_BY_ID": str(by_user),
        "DATE_CREATE": now,
        "DATE_MODIFY": now,
        "MOVED_BY_ID": str(by_user),
        "MOVED_TIME": now,
        "CLOSED": "N",
        "CLOSEDATE": now,
        "BEGINDATE": now,
        "COMMENTS": str(fields.get("COMMENTS") or ""),
        "ORIGINATOR_ID": fields.get("ORIGINATOR_ID"),
        "ORIGIN_ID": fields.get("ORIGIN_ID"),
    }
    for key, value in fields.items():
        if key.startswith("UF_CRM_") and _known_uf(state, key):
            deal[key] = _uf_value(state, key, value)
    _sync_closed(deal)
    state.deals[deal_id] = deal
    ctx.touch()
    if emit:
        ctx.emit("ONCRMDEALADD", {"ID": str(deal_id)})
    return deal


def _known_uf(state: PortalState, name: str) -> bool:
    return any(uf["FIELD_NAME"] == name for uf in state.userfields.values())


def _uf_value(state: PortalState, name: str, value: Any) -> Any:
    """A user field's value as stored. An enumeration stores the ID of one of its list items
    (crm.deal.userfield.list LIST[].ID; DOCS crm user-fields examples carry `items` [{ID, VALUE}]):
    the core keeps the value as an integer id, so anything else, such as the item's text, is
    stored as no value, silently, as the portal does."""
    field = next((uf for uf in state.userfields.values() if uf["FIELD_NAME"] == name), None)
    if field is None or field["USER_TYPE_ID"] != "enumeration":
        return _clean_value(value)
    ids = {str(item["ID"]) for item in field.get("LIST") or []}
    if isinstance(value, list):
        return [str(v) for v in value if str(v) in ids]
    return str(value) if value is not None and str(value) in ids else ""


def _sync_closed(deal: dict[str, Any]) -> None:
    deal["CLOSED"] = "Y" if deal["STAGE_SEMANTIC_ID"] in ("S", "F") else "N"


def deal_add(ctx: Context, params: dict[str, Any]) -> Result:
    fields = params.get("fields")
    if not isinstance(fields, dict):
        raise bad("Parameter 'fields' must be array.", "INVALID_ARG_VALUE")
    return Result(create_deal(ctx, fields, by_user=ctx.user_id)["ID"])


def change_deal(
    ctx: Context, deal: dict[str, Any], fields: dict[str, Any], *, by_user: int, allow_category: bool
) -> bool:
    """Apply changes; emit ONCRMDEALUPDATE, or ONCRMDEALMOVETOCATEGORY when the funnel changed
    (DOCS crm/deals/events: a move to another funnel does not fire ONCRMDEALUPDATE)."""
    old_category = deal["CATEGORY_ID"]
    category_id = _target_category(ctx.state, deal, fields, allow_category)
    moved = False
    if "STAGE_ID" in fields or category_id != old_category:
        stage_id = _target_stage(ctx.state, deal, fields, category_id, allow_category)
        moved = _move_deal(ctx, deal, category_id, stage_id, by_user)
    edited = _apply_fields(ctx.state, deal, fields)
    changed = moved or edited
    if changed:
        _announce_change(ctx, deal, by_user, moved_category=category_id != old_category)
    return changed


def _target_category(
    state: PortalState, deal: dict[str, Any], fields: dict[str, Any], allow_category: bool
) -> int:
    """The funnel the deal ends up in: only crm.item.update and the UI may move it to another."""
    if allow_category and "CATEGORY_ID" in fields and str(fields["CATEGORY_ID"]) != "":
        category_id = _as_int(fields["CATEGORY_ID"], "CATEGORY_ID")
        if category_id not in state.categories:
            raise bad(f"Category with ID {category_id} not found", "NOT_FOUND")
        return category_id
    current: int = deal["CATEGORY_ID"]
    return current


def _target_stage(
    state: PortalState, deal: dict[str, Any], fields: dict[str, Any], category_id: int, allow_category: bool
) -> str:
    """The stage the deal ends up in, given the funnel it ends up in."""
    stage_id = str(fields.get("STAGE_ID") or "")
    if state.stage(category_id, stage_id) is not None:
        return stage_id
    if not allow_category:
        # Legacy crm.deal.update silently ignores a stage not in the deal's funnel
        # (CORE CAllCrmDeal::Update, docs/crm/bitrix24.md §2).
        current: str = deal["STAGE_ID"]
        return current
    if stage_id:
        # crm.item.update validates the stage against the pipeline. UNVERIFIED exact
        # error code/text: we answer like other crm.item field errors.
        raise bad(f'Incorrect value for field "Stage" ({stage_id})', "CRM_FIELD_ERROR_VALUE_NOT_VALID")
    first: str = state.stages_of(category_id)[0]["STATUS_ID"]
    return first


def _move_deal(ctx: Context, deal: dict[str, Any], category_id: int, stage_id: str, by_user: int) -> bool:
    """Put the deal in that funnel and stage; False when it is there already."""
    if stage_id == deal["STAGE_ID"] and category_id == deal["CATEGORY_ID"]:
        return False
    deal["CATEGORY_ID"] = category_id
    deal["STAGE_ID"] = stage_id
    deal["STAGE_SEMANTIC_ID"] = _semantic(ctx.state, category_id, stage_id)
    deal["MOVED_TIME"] = ctx.clock.now()
    deal["MOVED_BY_ID"] = str(by_user)
    _sync_closed(deal)
    return True


def _apply_fields(state: PortalState, deal: dict[str, Any], fields: dict[str, Any]) -> bool:
    """Write the writable fields other than the stage; whether any value changed."""
    changed = False
    for key, value in fields.items():
        if key in _READONLY or key == "STAGE_ID":
            continue
        if key.startswith("UF_CRM_") and not _known_uf(state, key):
            continue  # unknown fields are ignored silently (DOCS crm-deal-update)
        if key == "OPPORTUNITY":
            value = f"{Decimal(str(value or 0)):.2f}"
        if key in deal or key.startswith("UF_CRM_") or key in ITEM_NAMES:
            new = _uf_value(state, key, value) if key.startswith("UF_CRM_") else _clean_value(value)
            if deal.get(key) != new:
                deal[key] = new
                changed = True
    return changed


def _announce_change(ctx: Context, deal: dict[str, Any], by_user: int, *, moved_category: bool) -> None:
    """Stamp the change and queue its event."""
    deal["DATE_MODIFY"] = ctx.clock.now()
    deal["MODIFY_BY_ID"] = str(by_user)
    deal["IS_NEW"] = "N"
    ctx.touch()
    if moved_category:
        ctx.emit(
            "ONCRMDEALMOVETOCATEGORY",
            {"ID": str(deal["ID"]), "CATEGORY_ID": str(deal["CATEGORY_ID"]), "STAGE_ID": deal["STAGE_ID"]},
        )
    else:
        ctx.emit("ONCRMDEALUPDATE", {"ID": str(deal["ID"])})


def deal_update(ctx: Context, params: dict[str, Any]) -> Result:
    deal = ctx.state.deals.get(_as_int(params.get("id", params.get("ID", "")), "ID"))
    if deal is None:
        raise bad("Not found", "NOT_FOUND")
    if not ctx.state.may_edit(ctx.user_id, int(deal["ID"])):
        # Legacy method: no code, only the text (DOCS crm-deal-update.md error table: "-", "Access denied").
        raise bad("Access denied")
    fields = params.get("fields")
    if not isinstance(fields, dict):
        raise bad("Parameter 'fields' must be array.", "INVALID_ARG_VALUE")
    change_deal(ctx, deal, fields, by_user=ctx.user_id, allow_category=False)
    return Result(True)


def remove_deal(ctx: Context, deal_id: int) -> None:
    if ctx.state.deals.pop(deal_id, None) is None:
        raise bad("Not found", "NOT_FOUND")
    ctx.state.deal_contacts.pop(deal_id, None)
    ctx.touch()
    ctx.emit("ONCRMDEALDELETE", {"ID": str(deal_id)})


def deal_delete(ctx: Context, params: dict[str, Any]) -> Result:
    remove_deal(ctx, _as_int(params.get("id", params.get("ID", "")), "ID"))
    return Result(True)


# --- crm.item.* (entityTypeId = 2) ----------------------------------------------------------------


def access_denied() -> ApiError:
    """The user may not change this item: HTTP 400 `ACCESS_DENIED` "Access denied" (DOCS
    crm-item-update.md error table). Inside a batch it is that command's result_error only."""
    return ApiError(400, "ACCESS_DENIED", "Access denied")


def _entity_type(params: dict[str, Any]) -> None:
    if str(params.get("entityTypeId", "")) != "2":
        raise ApiError(400, "NOT_FOUND", "Smart process not found")


def to_item(deal: dict[str, Any], ctx: Context | None = None, *, original_uf: bool = False) -> dict[str, Any]:
    """crm.item shape; with `ctx` also contactIds (DOCS crm-item-add.md response), and with
    `original_uf` (useOriginalUfNames=Y) user fields under their UF_CRM_* names."""
    item: dict[str, Any] = {}
    if ctx is not None:
        item["contactIds"] = [int(b["CONTACT_ID"]) for b in contacts.bindings_of(ctx, int(deal["ID"]))]
    for key, value in deal.items():
        if key.startswith("_"):
            continue
        uf_name = (key if original_uf else uf_to_camel(key)) if key.startswith("UF_CRM_") else None
        name = ITEM_NAMES.get(key) or uf_name
        if name is None:
            continue
        if key in ("ID", "CATEGORY_ID", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID", "MOVED_BY_ID"):
            value = int(value) if value not in (None, "") else None
        elif key == "OPPORTUNITY":
            value = float(value)
        elif key in ("CLOSED", "IS_NEW"):
            value = value == "Y"
        item[name] = value
    return item


def _legacy_fields(ctx: Context, fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        legacy = camel_to_legacy(key, ctx.state)
        if isinstance(value, bool):
            value = "Y" if value else "N"
        out[legacy] = value
    return out


def item_get(ctx: Context, params: dict[str, Any]) -> Result:
    _entity_type(params)
    deal = ctx.state.deals.get(_as_int(params.get("id", ""), "id"))
    if deal is None:
        raise ApiError(400, "NOT_FOUND", "Element not found")
    return Result({"item": to_item(deal, ctx, original_uf=_original_uf(params))})


_CAMEL_FILTER = re.compile(r"^(!@|>=|<=|!=|=%|%=|>|<|@|!|=|%)?(.*)$")


def item_list(ctx: Context, params: dict[str, Any]) -> Result:
    _entity_type(params)
    translated = dict(params)
    filters = {}
    for key, value in (params.get("filter") or {}).items():
        match = _CAMEL_FILTER.match(key)
        assert match is not None
        filters[(match.group(1) or "") + camel_to_legacy(match.group(2), ctx.state)] = value
    translated["filter"] = filters
    translated["order"] = {camel_to_legacy(k, ctx.state): v for k, v in (params.get("order") or {}).items()}
    page, total, nxt = query_deals(ctx, translated)
    return Result({"items": [to_item(d) for d in page]}, total, nxt)


def _original_uf(params: dict[str, Any]) -> bool:
    return str(params.get("useOriginalUfNames", "N")).upper() in ("Y", "1", "TRUE")


def _check_new_stage(ctx: Context, fields: dict[str, Any]) -> None:
    """crm.item.add checks field values (DOCS crm-item-add.md): a stage outside the category is
    CRM_FIELD_ERROR_VALUE_NOT_VALID, worded as crm.item.update's (exact text UNVERIFIED)."""
    stage_id = str(fields.get("STAGE_ID") or "")
    category_id = _as_int(fields.get("CATEGORY_ID", 0) or 0, "categoryId")
    if category_id not in ctx.state.categories:
        raise ApiError(
            400, "CRM_FIELD_ERROR_VALUE_NOT_VALID", f'Incorrect value for field "Pipeline" ({category_id})'
        )
    if stage_id and ctx.state.stage(category_id, stage_id) is None:
        raise ApiError(
            400, "CRM_FIELD_ERROR_VALUE_NOT_VALID", f'Incorrect value for field "Stage" ({stage_id})'
        )


def item_add(ctx: Context, params: dict[str, Any]) -> Result:
    _entity_type(params)
    fields = params.get("fields")
    if not isinstance(fields, dict):
        raise ApiError(400, "INVALID_ARG_VALUE", "Parameter 'fields' must be array.")
    fields = dict(fields)
    contact_ids = contacts.check_contact_ids(ctx, fields.pop("contactIds")) if "contactIds" in fields else []
    legacy = _legacy_fields(ctx, fields)
    _check_new_stage(ctx, legacy)
    deal = create_deal(ctx, legacy, by_user=ctx.user_id)
    if contact_ids:
        contacts.bind_contacts(ctx, int(deal["ID"]), contact_ids)
    return Result({"item": to_item(deal, ctx, original_uf=_original_uf(params))})


def item_update(ctx: Context, params: dict[str, Any]) -> Result:
    _entity_type(params)
    deal = ctx.state.deals.get(_as_int(params.get("id", ""), "id"))
    if deal is None:
        raise ApiError(400, "NOT_FOUND", "Element not found")
    if not ctx.state.may_edit(ctx.user_id, int(deal["ID"])):
        raise access_denied()
    fields = params.get("fields")
    if not isinstance(fields, dict):
        raise ApiError(400, "INVALID_ARG_VALUE", "Parameter 'fields' must be array.")
    fields = dict(fields)
    contact_ids = (
        contacts.check_contact_ids(ctx, fields.pop("contactIds")) if "contactIds" in fields else None
    )
    change_deal(ctx, deal, _legacy_fields(ctx, fields), by_user=ctx.user_id, allow_category=True)
    if contact_ids is not None:
        contacts.bind_contacts(ctx, int(deal["ID"]), contact_ids)
    return Result({"item": to_item(deal, ctx, original_uf=_original_uf(params))})


def item_delete(ctx: Context, params: dict[str, Any]) -> Result:
    _entity_type(params)
    deal_id = _as_int(params.get("id", ""), "id")
    if deal_id not in ctx.state.deals:
        raise ApiError(400, "NOT_FOUND", "Element not found")
    remove_deal(ctx, deal_id)
    return Result(None)


def seed_deals(ctx: Context, count: int, category_id: int, title: str) -> list[int]:
    """Bulk-create deals without events (an import), for load tests and benchmarks."""
    ids = []
    for n in range(count):
        deal = create_deal(
            ctx, {"TITLE": f"{title} {n + 1}", "CATEGORY_ID": category_id}, by_user=ctx.user_id, emit=False
        )
        ids.append(int(deal["ID"]))
    return ids


HANDLERS = {
    "crm.deal.list": deal_list,
    "crm.deal.get": deal_get,
    "crm.deal.add": deal_add,
    "crm.deal.update": deal_update,
    "crm.deal.delete": deal_delete,
    "crm.item.list": item_list,
    "crm.item.get": item_get,
    "crm.item.add": item_add,
    "crm.item.update": item_update,
    "crm.item.delete": item_delete,
}
