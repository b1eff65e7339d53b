"""user.get: the portal's staff (docs/crm/bitrix24.md §8).

The sandbox portal has a fixed staff: the webhook's administrator (user 1), the manager the
simulation acts as (user 7), a dismissed manager and a sales department, more than one 50-row page
in all, so a client that does not follow `next` misses people."""

from __future__ import annotations

from typing import Any

from connectors.bitrix24.sandbox.api import Context, Result, bad

PAGE = 50  # DOCS api-reference/user/user-get.md: the page size is always 50
DISMISSED_ID = 9
DEPARTMENT = range(11, 64)  # "Менеджер 11" ... "Менеджер 63"


def _user(user_id: int, name: str, last_name: str, *, active: bool = True) -> dict[str, Any]:
    return {
        "ID": str(user_id),
        "ACTIVE": active,
        "NAME": name,
        "LAST_NAME": last_name,
        "SECOND_NAME": "",
        "EMAIL": f"user{user_id}@portal.example",
        "USER_TYPE": "employee",
        "UF_DEPARTMENT": [1],
    }


STAFF: list[dict[str, Any]] = [
    _user(1, "Ирина", "Соколова"),
    _user(7, "Павел", "Орлов"),
    _user(DISMISSED_ID, "Олег", "Кузнецов", active=False),
    *(_user(n, "Менеджер", str(n)) for n in DEPARTMENT),
]


def _wanted(row: dict[str, Any], filters: dict[str, Any]) -> bool:
    """The filters FunnelSync could send: ACTIVE (true excludes the dismissed) and ID / @ID."""
    active = filters.get("ACTIVE")
    if active is not None and str(active).lower() in ("true", "y", "1") and not row["ACTIVE"]:
        return False
    ids = filters.get("@ID", filters.get("ID"))
    if ids is None:
        return True
    wanted = ids if isinstance(ids, list) else [ids]
    return row["ID"] in {str(i) for i in wanted}


def user_get(ctx: Context, params: dict[str, Any]) -> Result:
    # DOCS shows both a FILTER object and the fields given at the top level; take either.
    raw = params.get("FILTER", params.get("filter"))
    filters = raw if isinstance(raw, dict) else {}
    order = str(params.get("order", params.get("ORDER", "ASC"))).upper()
    rows = sorted(
        (dict(r) for r in STAFF if _wanted(r, filters)), key=lambda r: int(r["ID"]), reverse=order == "DESC"
    )
    try:
        start = max(int(str(params.get("start", 0) or 0)), 0)
    except ValueError:
        raise bad("start is not defined or invalid.") from None
    nxt = start + PAGE if start + PAGE < len(rows) else None
    return Result(rows[start : start + PAGE], len(rows), nxt)


HANDLERS = {"user.get": user_get}
