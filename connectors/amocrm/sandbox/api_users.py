"""GET /api/v4/users: the account's users (docs/crm/amocrm.md §9).

Users live in the state as {id, name, is_admin} (optionally email, is_active); the answer has the
documented shape: `_embedded.users` with `rights`, paged by `page`/`limit` (at most 250), 204 past
the end, and 403 for a caller who is not an administrator."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from connectors.amocrm.sandbox.common import base, sandbox, user_id
from connectors.amocrm.sandbox.errors import problem
from connectors.amocrm.sandbox.paging import paged

router = APIRouter()
USERS = "/api/v4/users"


def _user_out(user: dict[str, Any], href: str) -> dict[str, Any]:
    return {
        "id": user["id"],
        "name": user["name"],
        "email": user.get("email") or f"user{user['id']}@example.com",
        "lang": "ru",
        "rights": {
            "is_admin": bool(user.get("is_admin")),
            "is_free": False,
            "is_active": user.get("is_active", True) is not False,
            "group_id": None,
            "role_id": None,
        },
        "_links": {"self": {"href": f"{href}/{user['id']}"}},
    }


@router.get(USERS)
async def list_users(request: Request) -> Response:
    state = sandbox(request).state
    caller = next((u for u in state.data["users"] if u["id"] == user_id(request)), None)
    if caller is None or not caller.get("is_admin"):
        return problem(403, "Forbidden", "Access denied")
    users = sorted(state.data["users"], key=lambda u: int(u["id"]))
    href = base(request) + USERS
    return paged(request, users, "users", render=lambda u: _user_out(u, href), with_total=True)
