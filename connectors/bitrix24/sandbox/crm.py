"""Sandbox methods other than deals: categories, stages, user fields, tasks, comments, events."""

from __future__ import annotations

import re
from typing import Any

from connectors.bitrix24.sandbox.api import ApiError, Context, Result, bad
from connectors.bitrix24.sandbox.state import entity_id_for, stage_prefix

PAGE = 50
_STATUS_CODE = re.compile(r"^[A-Za-z0-9_\-]+$")
# DOCS crm-status-add.md: DEAL_STAGE codes max 22, Latin letters/digits/-/_; DEAL_STAGE_xx "depends
# on the pipeline identifier". Still unverified: the exact formula; we apply 22 to the full id
# including the `Cxx:` prefix, the safe reading (docs/crm/bitrix24.md §1).
STATUS_ID_MAX = 22
_UF_NAME = re.compile(r"^[A-Z0-9_]+$")
_UF_TYPES = {
    "string", "integer", "double", "boolean", "datetime", "date", "money", "url", "address",
    "enumeration", "file", "employee", "crm_status", "iblock_section", "iblock_element", "crm",
}  # fmt: skip
DEAL_EVENTS = {
    "ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE", "ONCRMDEALMOVETOCATEGORY",
    "ONCRMDEALUSERFIELDADD", "ONCRMDEALUSERFIELDUPDATE", "ONCRMDEALUSERFIELDDELETE", "ONAPPTEST",
}  # fmt: skip


def _int(value: Any, what: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise bad(f"{what} is not defined or invalid.") from None


def _page(rows: list[Any], params: dict[str, Any]) -> Result:
    start = max(_int(params.get("start", 0) or 0, "start"), 0)
    nxt = start + PAGE if start + PAGE < len(rows) else None
    return Result(rows[start : start + PAGE], len(rows), nxt)


# --- crm.category.* -------------------------------------------------------------------------------


def _deal_type(params: dict[str, Any]) -> None:
    entity = str(params.get("entityTypeId", ""))
    if entity == "1":
        raise ApiError(400, "ENTITY_TYPE_NOT_SUPPORTED", "Entity type `1` is not supported")
    if entity != "2":
        raise ApiError(400, "NOT_FOUND", "Smart process not found")


def category_list(ctx: Context, params: dict[str, Any]) -> Result:
    _deal_type(params)
    rows = sorted(ctx.state.categories.values(), key=lambda c: (int(c["sort"]), int(c["id"])))
    page = _page(rows, params)
    return Result({"categories": page.value}, page.total, page.next)


def category_get(ctx: Context, params: dict[str, Any]) -> Result:
    _deal_type(params)
    row = ctx.state.categories.get(_int(params.get("id", ""), "id"))
    if row is None:
        raise ApiError(400, "NOT_FOUND", "Element not found")
    return Result({"category": row})


def category_add(ctx: Context, params: dict[str, Any]) -> Result:
    _deal_type(params)
    fields = params.get("fields") or {}
    name = str(fields.get("name", "")).strip() if isinstance(fields, dict) else ""
    if not name:
        raise ApiError(400, "CRM_FIELD_ERROR_REQUIRED", 'The field "Name" is required.')
    if len(name) > 255:
        raise ApiError(400, "CRM_FIELD_ERROR_VALUE_NOT_VALID", 'The field "Name" is too long.')
    category_id = ctx.state.next_id("category")
    sort = max(_int(fields.get("sort", 500) or 500, "sort"), 0)
    row = {
        "id": category_id,
        "name": name,
        "sort": sort,
        "entityTypeId": 2,
        "isDefault": "N",
        "originId": str(fields.get("originId", "") or ""),
        "originatorId": str(fields.get("originatorId", "") or ""),
    }
    ctx.state.categories[category_id] = row
    # A new funnel is immediately filled with the default stages (docs/crm/bitrix24.md §1).
    ctx.state.add_default_stages(category_id)
    ctx.touch()
    return Result({"category": row})


def category_update(ctx: Context, params: dict[str, Any]) -> Result:
    _deal_type(params)
    row = ctx.state.categories.get(_int(params.get("id", ""), "id"))
    if row is None:
        raise ApiError(400, "NOT_FOUND", "Element not found")
    fields = params.get("fields") or {}
    if "name" in fields:
        if not str(fields["name"]).strip():
            raise ApiError(400, "CRM_FIELD_ERROR_REQUIRED", 'The field "Name" is required.')
        row["name"] = str(fields["name"]).strip()
    if "sort" in fields:
        row["sort"] = max(_int(fields["sort"], "sort"), 0)
    ctx.touch()
    return Result({"category": row})


def category_delete(ctx: Context, params: dict[str, Any]) -> Result:
    _deal_type(params)
    category_id = _int(params.get("id", ""), "id")
    row = ctx.state.categories.get(category_id)
    if row is None:
        raise ApiError(400, "NOT_FOUND", "Element not found")
    if row["isDefault"] == "Y":
        raise ApiError(400, "0", "Default deal category cannot be deleted")
    if any(d["CATEGORY_ID"] == category_id for d in ctx.state.deals.values()):
        raise ApiError(400, "0", f"Deals related to the funnel `{row['name']}` found")
    del ctx.state.categories[category_id]
    entity = entity_id_for(category_id)
    for row_id in [k for k, s in ctx.state.statuses.items() if s["ENTITY_ID"] == entity]:
        del ctx.state.statuses[row_id]
    ctx.touch()
    return Result(None)


# --- crm.status.* ---------------------------------------------------------------------------------


def status_out(row: dict[str, Any]) -> dict[str, Any]:
    """List/get shape: numbers as strings, EXTRA with the semantic group (DOCS crm-status-list)."""
    category = row["CATEGORY_ID"]
    return {
        "ID": str(row["ID"]),
        "ENTITY_ID": row["ENTITY_ID"],
        "STATUS_ID": row["STATUS_ID"],
        "NAME": row["NAME"],
        "NAME_INIT": row["NAME_INIT"],
        "SORT": str(row["SORT"]),
        "SYSTEM": row["SYSTEM"],
        "CATEGORY_ID": None if category is None else str(category),
        "COLOR": row["COLOR"],
        "SEMANTICS": row["SEMANTICS"],
        "EXTRA": {"SEMANTICS": row["EXTRA_SEMANTICS"], "COLOR": row["COLOR"]},
    }


def status_list(ctx: Context, params: dict[str, Any]) -> Result:
    filters = params.get("filter") or {}
    rows = list(ctx.state.statuses.values())
    for key, value in filters.items() if isinstance(filters, dict) else []:
        rows = [r for r in rows if str(r.get(key.upper())) == str(value)]
    order = params.get("order") or {"SORT": "ASC"}
    for field, direction in reversed(list(order.items())):
        name = field.upper()
        numeric = name in ("SORT", "ID")

        def key(row: dict[str, Any], f: str = name, n: bool = numeric) -> Any:
            return int(row[f]) if n else str(row.get(f))

        rows.sort(key=key, reverse=str(direction).upper() == "DESC")
    return _page([status_out(r) for r in rows], params)


def status_get(ctx: Context, params: dict[str, Any]) -> Result:
    row = ctx.state.statuses.get(_int(params.get("id", ""), "id"))
    if row is None:
        raise bad("Status is not found.")
    return Result(status_out(row))


def _check_sort(ctx: Context, category_id: int, semantics: str | None, sort: int, row_id: int | None) -> None:
    """SORT order rule: in-progress stages < the single success stage < failure stages."""
    stages = [s for s in ctx.state.stages_of(category_id) if s["ID"] != row_id]
    success = next((s for s in stages if s["SEMANTICS"] == "S"), None)
    if success is None:
        return
    if semantics is None and sort > int(success["SORT"]):
        raise bad(
            "Cannot create more stages after the final stage because the final successful stage already "
            "exists. Try using sort order values less than that of the final stage."
        )
    if semantics == "F" and sort < int(success["SORT"]):
        raise bad("Failure stages must follow the final successful stage. Use a sort order greater than it.")


def status_add(ctx: Context, params: dict[str, Any]) -> Result:
    fields = params.get("fields")
    if not isinstance(fields, dict):
        raise bad("Invalid parameters.", "Invalid parameters.")
    entity = str(fields.get("ENTITY_ID") or "")
    if not entity:
        raise bad("The field ENTITY_ID is required.")
    category_id = ctx.state.category_of_entity(entity)
    if category_id is None:
        raise bad("Specified entity type is not supported.")
    code = str(fields.get("STATUS_ID") or "").strip()
    if not code:
        raise bad("The field STATUS_ID is required.")
    name = str(fields.get("NAME") or "").strip()
    if not name:
        raise bad("The field NAME is required.")
    prefix = stage_prefix(category_id)
    status_id = code if (not prefix or code.startswith(prefix)) else prefix + code
    bare = status_id[len(prefix) :]
    if not _STATUS_CODE.match(bare) or len(status_id) > STATUS_ID_MAX:
        raise bad(
            f"The field STATUS_ID is incorrect: up to {STATUS_ID_MAX} characters, Latin letters, digits, "
            "hyphens and underscores only."
        )
    if ctx.state.stage(category_id, status_id) is not None:
        raise bad("The specified status ID already exists.", "ERROR_CORE")
    raw_semantics = str(fields.get("SEMANTICS") or "").upper()
    semantics = raw_semantics if raw_semantics in ("S", "F") else None
    sort = _int(fields.get("SORT", 10) or 10, "SORT")
    if semantics == "S" and any(s["SEMANTICS"] == "S" for s in ctx.state.stages_of(category_id)):
        raise bad("The final successful stage already exists.")
    _check_sort(ctx, category_id, semantics, sort, None)
    row_id = ctx.state.next_id("status")
    ctx.state.statuses[row_id] = {
        "ID": row_id,
        "ENTITY_ID": entity,
        "STATUS_ID": status_id,
        "NAME": name,
        "NAME_INIT": "",
        "SORT": sort,
        "SYSTEM": "N",
        "CATEGORY_ID": None if category_id == 0 else category_id,
        "COLOR": str(fields.get("COLOR") or "#ACE9FB"),
        "SEMANTICS": semantics,
        "EXTRA_SEMANTICS": {"S": "success", "F": "failure"}.get(semantics or "", "process"),
    }
    ctx.touch()
    return Result(row_id)


def status_update(ctx: Context, params: dict[str, Any]) -> Result:
    row = ctx.state.statuses.get(_int(params.get("id", ""), "id"))
    if row is None:
        raise bad("Status is not found.")
    fields = params.get("fields") or {}
    category_id = ctx.state.category_of_entity(row["ENTITY_ID"]) or 0
    if "SORT" in fields:
        sort = _int(fields["SORT"], "SORT")
        _check_sort(ctx, category_id, row["SEMANTICS"], sort, row["ID"])
        row["SORT"] = sort
    if "NAME" in fields:
        if not str(fields["NAME"]).strip():
            raise bad("The field NAME is required.")
        row["NAME"] = str(fields["NAME"]).strip()
    if "COLOR" in fields:
        row["COLOR"] = str(fields["COLOR"])
    ctx.touch()
    return Result(True)


def status_delete(ctx: Context, params: dict[str, Any]) -> Result:
    row = ctx.state.statuses.get(_int(params.get("id", ""), "id"))
    if row is None:
        raise bad("Status is not found.")
    extra = params.get("params") or {}
    forced = isinstance(extra, dict) and str(extra.get("FORCED", "")).upper() == "Y"
    if row["SYSTEM"] == "Y" and not forced:
        raise bad('CRM System Status can be deleted only if parameter FORCED is specified and equal to "Y".')
    if row["SEMANTICS"] == "S":
        # Still unverified: the real text. Every funnel keeps its success stage (fixed final stages).
        raise bad("The final successful stage cannot be deleted.")
    category_id = ctx.state.category_of_entity(row["ENTITY_ID"]) or 0
    if any(
        d["CATEGORY_ID"] == category_id and d["STAGE_ID"] == row["STATUS_ID"]
        for d in ctx.state.deals.values()
    ):
        raise bad("There are active items in this status.")
    del ctx.state.statuses[row["ID"]]
    ctx.touch()
    return Result(True)


# --- crm.deal.userfield.* -------------------------------------------------------------------------


def _uf_out(row: dict[str, Any], lang: str | None) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "LABEL"}
    out["ID"] = str(row["ID"])
    out["SORT"] = str(row["SORT"])
    if lang:  # labels come back only when a LANG filter is given (DOCS crm-deal-userfield-list)
        for key in ("EDIT_FORM_LABEL", "LIST_COLUMN_LABEL", "LIST_FILTER_LABEL"):
            out[key] = row["LABEL"]
        out["ERROR_MESSAGE"] = None
        out["HELP_MESSAGE"] = None
    return out


def userfield_list(ctx: Context, params: dict[str, Any]) -> Result:
    filters = dict(params.get("filter") or {})
    lang = filters.pop("LANG", None)
    rows = sorted(ctx.state.userfields.values(), key=lambda r: (int(r["SORT"]), int(r["ID"])))
    for key, value in filters.items():
        rows = [r for r in rows if str(r.get(key.upper())) == str(value)]
    return _page([_uf_out(r, lang) for r in rows], params)


def userfield_get(ctx: Context, params: dict[str, Any]) -> Result:
    row = ctx.state.userfields.get(_int(params.get("id", ""), "id"))
    if row is None:
        raise ApiError(400, "ERROR_NOT_FOUND", "Not found")
    return Result(_uf_out(row, "en"))


def userfield_add(ctx: Context, params: dict[str, Any]) -> Result:
    fields = params.get("fields")
    if not isinstance(fields, dict):
        raise ApiError(400, "ERROR_CORE", "Parameter 'fields' must be array.")
    name = str(fields.get("FIELD_NAME") or "").upper()
    if not name:
        raise ApiError(400, "ERROR_CORE", "FIELD_NAME is required.")
    if name.startswith("UF_CRM_"):
        name = name[len("UF_CRM_") :]
    elif name.startswith("UF_"):
        name = name[len("UF_") :]
    full = "UF_CRM_" + name
    if not _UF_NAME.match(name) or len(full) > 50:
        raise ApiError(
            400, "ERROR_CORE", "Invalid field name: only A-Z, 0-9 and _ are allowed, up to 50 characters."
        )
    if any(r["FIELD_NAME"] == full for r in ctx.state.userfields.values()):
        raise ApiError(400, "ERROR_CORE", f"Field {full} already exists.")
    user_type = str(fields.get("USER_TYPE_ID") or "")
    if user_type not in _UF_TYPES:
        raise ApiError(400, "ERROR_CORE", f"Unknown user type {user_type!r}.")
    multiple = str(fields.get("MULTIPLE") or "N").upper()
    if user_type == "boolean" and multiple == "Y":
        raise ApiError(400, "ERROR_CORE", "Boolean fields cannot be multiple.")
    row_id = ctx.state.next_id("userfield", 6990)
    label = fields.get("LABEL") or fields.get("EDIT_FORM_LABEL") or full
    row: dict[str, Any] = {
        "ID": row_id,
        "ENTITY_ID": "CRM_DEAL",
        "FIELD_NAME": full,
        "USER_TYPE_ID": user_type,
        "XML_ID": fields.get("XML_ID"),
        "SORT": _int(fields.get("SORT", 100) or 100, "SORT"),
        "MULTIPLE": multiple,
        "MANDATORY": str(fields.get("MANDATORY") or "N").upper(),
        "SHOW_FILTER": str(fields.get("SHOW_FILTER") or "N").upper(),
        "SHOW_IN_LIST": str(fields.get("SHOW_IN_LIST") or "Y").upper(),
        "EDIT_IN_LIST": "Y",
        "IS_SEARCHABLE": "N",
        "SETTINGS": fields.get("SETTINGS") or {},
        "LABEL": label if isinstance(label, str) else str(next(iter(label.values()), full)),
    }
    if user_type == "enumeration":
        items = fields.get("LIST") or []
        row["LIST"] = []
        for index, item in enumerate(items if isinstance(items, list) else []):
            value = item.get("VALUE") if isinstance(item, dict) else item
            if not value:
                continue
            row["LIST"].append(
                {
                    "ID": str(ctx.state.next_id("enum", 40)),
                    "SORT": str(
                        item.get("SORT", (index + 1) * 10) if isinstance(item, dict) else (index + 1) * 10
                    ),
                    "VALUE": str(value),
                    "DEF": str(item.get("DEF", "N") if isinstance(item, dict) else "N"),
                    "XML_ID": str(item.get("XML_ID") or f"{row_id}_{index}")
                    if isinstance(item, dict)
                    else "",
                }
            )
    ctx.state.userfields[row_id] = row
    ctx.touch()
    return Result(row_id)


# --- tasks, timeline ------------------------------------------------------------------------------


def task_add(ctx: Context, params: dict[str, Any]) -> Result:
    fields = params.get("fields")
    if not isinstance(fields, dict):
        raise ApiError(400, "100", "Could not find value for parameter {fields}")
    title = str(fields.get("TITLE") or "").strip()
    if not title:
        raise ApiError(400, "ERROR_CORE", "Task title not specified")
    responsible = str(fields.get("RESPONSIBLE_ID") or "").strip()
    if not responsible:
        raise ApiError(400, "ERROR_CORE", "Responsible person not specified")
    bindings = fields.get("UF_CRM_TASK") or []
    bindings = bindings if isinstance(bindings, list) else [bindings]
    task_id = ctx.state.next_id("task", 3700)
    task = {
        "ID": task_id,
        "id": str(task_id),
        "title": title,
        "description": str(fields.get("DESCRIPTION") or ""),
        "responsibleId": responsible,
        "createdBy": str(fields.get("CREATED_BY") or ctx.user_id),
        "deadline": fields.get("DEADLINE") or None,
        "status": "2",
        "priority": str(fields.get("PRIORITY") or "1"),
        "ufCrmTask": [str(b) for b in bindings],
    }
    ctx.state.tasks[task_id] = task
    ctx.touch()
    return Result({"task": {k: v for k, v in task.items() if k not in ("ID", "ufCrmTask")}})


def task_update(ctx: Context, params: dict[str, Any]) -> Result:
    """tasks.task.update(taskId, fields): only the fields FunnelSync changes (deadline, title)."""
    raw_id = params.get("taskId")
    fields = params.get("fields")
    if not str(raw_id or "").isdigit():
        raise ApiError(400, "100", "Could not find value for parameter {taskId}")
    if not isinstance(fields, dict):
        raise ApiError(400, "100", "Could not find value for parameter {fields}")
    task = ctx.state.tasks.get(int(str(raw_id)))
    if task is None:
        raise ApiError(400, "ERROR_CORE", "Task not found or not accessible")
    if "DEADLINE" in fields:
        task["deadline"] = fields["DEADLINE"] or None
    if fields.get("TITLE"):
        task["title"] = str(fields["TITLE"])
    ctx.touch()
    return Result({"task": {k: v for k, v in task.items() if k not in ("ID", "ufCrmTask")}})


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def task_list(ctx: Context, params: dict[str, Any]) -> Result:
    """tasks.task.list: the filter FunnelSync uses is the CRM binding (UF_CRM_TASK "D_{id}");
    {"tasks": [...]} in camelCase like the real answer, newest first when ordered by ID desc."""
    flt = _mapping(params.get("filter"))
    wanted = flt.get("UF_CRM_TASK")
    bindings = {str(b) for b in (wanted if isinstance(wanted, list) else [wanted])} if wanted else None
    rows = [t for t in ctx.state.tasks.values() if bindings is None or bindings & set(t.get("ufCrmTask", []))]
    order = _mapping(params.get("order"))
    rows.sort(key=lambda t: t["ID"], reverse=str(order.get("ID", "asc")).lower() == "desc")
    page = rows[:50]
    tasks = [{k: v for k, v in t.items() if k not in ("ID", "ufCrmTask")} for t in page]
    return Result({"tasks": tasks}, total=len(rows), next=50 if len(rows) > 50 else None)


def comment_list(ctx: Context, params: dict[str, Any]) -> Result:
    """crm.timeline.comment.list: ENTITY_ID and ENTITY_TYPE are required in the filter (docs)."""
    flt = _mapping(params.get("filter"))
    if not flt.get("ENTITY_ID") or not flt.get("ENTITY_TYPE"):
        raise ApiError(400, "", "Required filter fields ENTITY_ID and ENTITY_TYPE are missing")
    entity_id = _int(flt["ENTITY_ID"], "ENTITY_ID")
    entity_type = str(flt["ENTITY_TYPE"]).lower()
    rows = [
        c
        for c in ctx.state.comments.values()
        if c["ENTITY_ID"] == entity_id and c["ENTITY_TYPE"] == entity_type
    ]
    order = _mapping(params.get("order"))
    rows.sort(key=lambda c: c["ID"], reverse=str(order.get("ID", "asc")).lower() == "desc")
    return Result([dict(c) for c in rows[:50]], total=len(rows), next=50 if len(rows) > 50 else None)


def comment_add(ctx: Context, params: dict[str, Any]) -> Result:
    fields = params.get("fields")
    if not isinstance(fields, dict):
        raise ApiError(400, "100", "Could not find value for parameter {fields}")
    entity_type = str(fields.get("ENTITY_TYPE") or "").lower()
    entity_id = _int(fields.get("ENTITY_ID") or 0, "ENTITY_ID")
    if entity_type != "deal" or entity_id not in ctx.state.deals:
        raise ApiError(400, "OWNER_NOT_FOUND", "Owner not found")
    if not ctx.state.may_edit(ctx.user_id, entity_id):
        # A comment needs the right to change its deal. DOCS crm-timeline-comment-add.md lists the
        # code ACCESS_DENIED; the exact text is UNVERIFIED, we answer as crm.item.update does.
        raise ApiError(400, "ACCESS_DENIED", "Access denied")
    text = str(fields.get("COMMENT") or "")
    if not text.strip():
        raise ApiError(400, "ERROR_EMPTY_COMMENT", "Empty comment")
    comment_id = ctx.state.next_id("comment", 900)
    ctx.state.comments[comment_id] = {
        "ID": comment_id,
        "ENTITY_ID": entity_id,
        "ENTITY_TYPE": entity_type,
        "COMMENT": text,
        "AUTHOR_ID": ctx.user_id,
        "CREATED": ctx.clock.now(),
    }
    ctx.touch()
    return Result(comment_id)


# --- event.* (application auth only) --------------------------------------------------------------


def _app_only(ctx: Context) -> None:
    if ctx.auth_kind != "oauth":
        # Event handlers need an application context (DOCS event-bind.md). Still unverified: the exact
        # status/code a webhook gets; PYSDK knows WRONG_AUTH_TYPE.
        raise ApiError(401, "WRONG_AUTH_TYPE", "Current authorization type is denied for this method")


def event_bind(ctx: Context, params: dict[str, Any]) -> Result:
    _app_only(ctx)
    event = str(params.get("event") or params.get("EVENT") or "").upper()
    handler = str(params.get("handler") or params.get("HANDLER") or "")
    if event not in DEAL_EVENTS:
        raise ApiError(400, "ERROR_EVENT_NOT_FOUND", "Event not found")
    if not handler.startswith(("http://", "https://")):
        raise ApiError(400, "ERROR_ARGUMENT", "Handler URL is invalid")
    auth_type = str(params.get("auth_type", "0") or "0")
    for bound in ctx.state.handlers:
        if bound["event"] == event and bound["handler"] == handler and bound["auth_type"] == auth_type:
            # The rest module wraps the table's uniqueness error (DOCS ru event-bind.md error table;
            # the rest module's eventBind: 'Unable to set event handler: ' + messages, ERROR_CORE).
            raise ApiError(400, "ERROR_CORE", "Unable to set event handler: Handler already binded")
    ctx.state.handlers.append(
        {"id": ctx.state.next_id("handler", 970), "event": event, "handler": handler, "auth_type": auth_type}
    )
    ctx.touch()
    return Result(True)


def event_get(ctx: Context, params: dict[str, Any]) -> Result:
    _app_only(ctx)
    rows = [
        {"event": h["event"], "handler": h["handler"], "auth_type": h["auth_type"], "offline": 0}
        for h in ctx.state.handlers
    ]
    return Result(rows)


def event_unbind(ctx: Context, params: dict[str, Any]) -> Result:
    _app_only(ctx)
    event = str(params.get("event") or "").upper()
    handler = str(params.get("handler") or "")
    auth_type = params.get("auth_type")
    keep = []
    removed = 0
    for bound in ctx.state.handlers:
        match = (
            (not event or bound["event"] == event)
            and (not handler or bound["handler"] == handler)
            and (auth_type is None or bound["auth_type"] == str(auth_type))
        )
        if match:
            removed += 1
        else:
            keep.append(bound)
    ctx.state.handlers = keep
    ctx.touch()
    return Result({"count": removed})


ALL_SCOPES = ("bizproc", "calendar", "crm", "department", "disk", "entity", "im", "log", "task", "user")


def scope(ctx: Context, params: dict[str, Any]) -> Result:
    """DOCS api-reference/common/system/scope.md: the granted scopes; `full` lists all the portal has."""
    if str(params.get("full", "")).lower() in ("1", "true", "y"):
        return Result(list(ALL_SCOPES))
    return Result(list(ctx.config.scopes))


HANDLERS = {
    "crm.category.list": category_list,
    "crm.category.get": category_get,
    "crm.category.add": category_add,
    "crm.category.update": category_update,
    "crm.category.delete": category_delete,
    "crm.status.list": status_list,
    "crm.status.get": status_get,
    "crm.status.add": status_add,
    "crm.status.update": status_update,
    "crm.status.delete": status_delete,
    "crm.deal.userfield.list": userfield_list,
    "crm.deal.userfield.get": userfield_get,
    "crm.deal.userfield.add": userfield_add,
    "tasks.task.add": task_add,
    "tasks.task.update": task_update,
    "tasks.task.list": task_list,
    "crm.timeline.comment.list": comment_list,
    "crm.timeline.comment.add": comment_add,
    "event.bind": event_bind,
    "event.get": event_get,
    "event.unbind": event_unbind,
    "scope": scope,
}
