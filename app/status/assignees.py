"""Connection assignees: which CRM user gets the tasks the rules assign to a template role
("supervisor" and the roles a provisioned template declares; "responsible" is always the deal's).

Moved out of app/connections: the roles come from the templates of the connection's provisioned
funnels, and funnels sit above connections. Stored in the connection's settings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum
from typing import Final, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import Connection
from app.connections.schemas import AssigneesOut, RoleOut
from app.connections.service import ConnectionNotFound, get_connection
from app.funnels.models import Funnel
from app.library.service import template_for
from funnel_templates.schema import BUILTIN_ROLES, RoleSpec

# Both CRMs identify users by numeric ids (Bitrix24 user ID, amoCRM user id), so an assignee is a
# string of ASCII digits; anything else (a login, a name, " 7") would only fail later, in the CRM.
USER_ID_RE = re.compile(r"[0-9]+")


class InvalidAssignees(ValueError):
    """Assignee input a connection cannot take (unknown role, malformed user id); nothing was
    written. The message names every problem and, for roles, the valid codes."""


class _Keep(Enum):
    KEEP = "keep"


# `set_assignees(supervisor_id=KEEP)`: leave the supervisor as it is (None clears it).
KEEP: Final = _Keep.KEEP


async def available_roles(session: AsyncSession, record: Connection) -> list[RoleSpec]:
    """The roles declared by the templates of the funnels provisioned in this connection, by code.
    "responsible" and "supervisor" are built in, never settable as roles; a template no longer in
    the library declares nothing."""
    keys = await session.scalars(
        select(Funnel.template_key).where(Funnel.connection_id == record.id).order_by(Funnel.id)
    )
    declared: dict[str, RoleSpec] = {}
    for key in keys:
        template = template_for(record, key)
        for role in template.roles if template is not None else []:
            if role.code not in BUILTIN_ROLES:
                declared.setdefault(role.code, role)
    return sorted(declared.values(), key=lambda r: r.code)


def _stored_roles(record: Connection) -> dict[str, str]:
    roles = (record.settings or {}).get("roles")
    return {str(k): str(v) for k, v in roles.items() if v} if isinstance(roles, Mapping) else {}


def assignees_out(record: Connection, roles: list[RoleSpec]) -> AssigneesOut:
    supervisor = (record.settings or {}).get("supervisor_id")
    return AssigneesOut(
        supervisor_id=str(supervisor) if supervisor else None,
        roles=_stored_roles(record),
        available_roles=[RoleOut(code=r.code, name_ru=r.name.ru, name_en=r.name.en) for r in roles],
    )


async def get_assignees(session: AsyncSession, name: str) -> AssigneesOut:
    record = await get_connection(session, name)
    return assignees_out(record, await available_roles(session, record))


def _user_id_problem(what: str, value: str) -> str | None:
    if USER_ID_RE.fullmatch(value):
        return None
    return f"{what}: a CRM user id is a number (digits only), got {value!r}"


def _role_problems(
    name: str, roles: Mapping[str, str | None], declared: list[RoleSpec], stored: Mapping[str, str]
) -> list[str]:
    valid = [r.code for r in declared]
    problems: list[str] = []
    unknown: list[str] = []
    for code, user in roles.items():
        if code == "supervisor":
            problems.append("roles.supervisor: the supervisor is set with supervisor_id, not as a role")
        elif code == "responsible":
            problems.append("roles.responsible: always the deal's responsible user, it cannot be reassigned")
        elif code not in valid and not (user is None and code in stored):
            # Removing a role a template no longer declares is allowed: it cleans up a stale entry.
            unknown.append(code)
        elif user is not None and (problem := _user_id_problem(f"roles.{code}", user)):
            problems.append(problem)
    if unknown:
        listed = ", ".join(repr(c) for c in unknown)
        if valid:
            problems.append(f"unknown role {listed} for connection {name!r}; valid roles: {', '.join(valid)}")
        else:
            problems.append(
                f"unknown role {listed}: no template provisioned in connection {name!r} declares "
                "roles (its tasks go to the responsible user or the supervisor)"
            )
    return problems


async def set_assignees(
    session: AsyncSession,
    name: str,
    *,
    supervisor_id: str | Literal[_Keep.KEEP] | None = KEEP,
    roles: Mapping[str, str | None] | None = None,
) -> AssigneesOut:
    """Partial update of who gets role tasks: `supervisor_id` a user id, None to clear, KEEP to
    leave; `roles` maps role code -> user id, or None to remove that role (its tasks then fall back
    to the deal's responsible user). Raises InvalidAssignees, writing nothing, when any part is
    invalid. Every other key of the connection's settings stays as it is."""
    # Locked (on PostgreSQL) so two concurrent updates of the same JSON cannot lose each other.
    record = await session.scalar(
        select(Connection)
        .where(Connection.name == name)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if record is None:
        raise ConnectionNotFound(name)
    declared = await available_roles(session, record)
    stored = _stored_roles(record)
    roles = dict(roles or {})
    problems: list[str] = []
    if isinstance(supervisor_id, str) and (problem := _user_id_problem("supervisor_id", supervisor_id)):
        problems.append(problem)
    problems += _role_problems(name, roles, declared, stored)
    if problems:
        raise InvalidAssignees("; ".join(problems) + "; nothing was written")

    current = dict(record.settings or {})
    updated = dict(current)
    if supervisor_id is None:
        updated.pop("supervisor_id", None)
    elif supervisor_id is not KEEP:
        updated["supervisor_id"] = supervisor_id
    if roles:
        merged = {**stored, **{code: user for code, user in roles.items() if user is not None}}
        for code in [c for c, user in roles.items() if user is None]:
            merged.pop(code, None)
        if merged:
            updated["roles"] = merged
        else:
            updated.pop("roles", None)
    if updated != current:
        # A new dict: SQLAlchemy does not see changes made inside a JSON value. Unchanged input
        # writes nothing (the row's updated_at, which the connector registry watches, stays).
        record.settings = updated
    return assignees_out(record, declared)
