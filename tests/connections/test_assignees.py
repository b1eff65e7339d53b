"""Connection assignees (the supervisor and template roles): set and read over real HTTP and the
real CLI on both databases, and the rules engine giving role tasks to the users set here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select

from app.connections import service
from app.funnels.models import Funnel
from app.main import create_app
from app.rules.engine import DealState, on_entry, resolve_assignee
from app.rules.service import load_funnel
from connectors.bitrix24.descriptor import Bitrix24ConnectionCreate
from tests.support import web
from tests.support.cli import run_cli
from tests.support.crm import APP_TOKEN, CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

AUTH = {"Authorization": "Bearer test-token-1234567890"}
REPAIR = "auto_service.repair"  # declares the roles mechanic and parts_manager
TYPICAL = "general.typical"  # declares no roles
# Stored, never called: nothing but the end-to-end test talks to a CRM.
WEBHOOK_URL = "https://portal.example.test/rest/1/abcdef123/"
REPAIR_ROLES = [
    {"code": "mechanic", "name_ru": "Автомеханик", "name_en": "Mechanic"},
    {"code": "parts_manager", "name_ru": "Менеджер по запчастям", "name_en": "Parts manager"},
]


async def seed(database_url: str, tmp_path: Path, templates: tuple[str, ...] = (REPAIR, TYPICAL)) -> None:
    """A Bitrix24 connection "b24" (supervisor 5, plus the settings keys that must survive) with one
    funnel row per template key, as provisioning leaves them."""
    settings = settings_for(tmp_path, database_url)
    data = Bitrix24ConnectionCreate(name="b24", crm="bitrix24", webhook_url=WEBHOOK_URL, supervisor_id="5")
    record = service.build_record(settings, data, None)
    record.settings = {**record.settings, "token_expires_at": "2030-01-01T00:00:00+00:00"}
    async with open_sessions(database_url) as sessions, sessions.begin() as session:
        await service.add_connection(session, record)
        for n, key in enumerate(templates):
            session.add(
                Funnel(connection_id=record.id, template_key=key, name=key, crm_pipeline_id=str(n + 1))
            )


async def stored_settings(database_url: str) -> dict[str, Any]:
    async with open_sessions(database_url) as sessions, sessions() as session:
        return dict((await service.get_connection(session, "b24")).settings)


ORIGINAL = {
    "supervisor_id": "5",
    "plan": "standard",
    "domain": "portal.example.test",
    "token_expires_at": "2030-01-01T00:00:00+00:00",
}


# --- HTTP -----------------------------------------------------------------------------------------


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    with serve_asgi(create_app(settings_for(tmp_path, database_url))) as url:
        async with web.async_client(base_url=url, headers=AUTH, timeout=60) as client:
            yield client


async def test_set_supervisor_and_roles_then_get_shows_them(
    api: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    await seed(database_url, tmp_path)
    before = await api.get("/api/connections/b24/assignees")
    assert before.status_code == 200, before.text
    assert before.json() == {"supervisor_id": "5", "roles": {}, "available_roles": REPAIR_ROLES}

    patched = await api.patch(
        "/api/connections/b24/assignees", json={"supervisor_id": "42", "roles": {"mechanic": "17"}}
    )
    assert patched.status_code == 200, patched.text
    expected = {"supervisor_id": "42", "roles": {"mechanic": "17"}, "available_roles": REPAIR_ROLES}
    assert patched.json() == expected
    assert (await api.get("/api/connections/b24/assignees")).json() == expected
    assert await stored_settings(database_url) == {
        **ORIGINAL,
        "supervisor_id": "42",
        "roles": {"mechanic": "17"},
    }

    # Partial: what the body leaves out stays as it is.
    again = await api.patch("/api/connections/b24/assignees", json={"roles": {"parts_manager": "18"}})
    assert again.status_code == 200, again.text
    assert again.json()["supervisor_id"] == "42"
    assert again.json()["roles"] == {"mechanic": "17", "parts_manager": "18"}
    assert await stored_settings(database_url) == {
        **ORIGINAL,
        "supervisor_id": "42",
        "roles": {"mechanic": "17", "parts_manager": "18"},
    }


async def test_unknown_role_is_422_naming_the_valid_ones_and_changes_nothing(
    api: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    await seed(database_url, tmp_path)
    body = {"supervisor_id": "43", "roles": {"mechanic": "17", "welder": "9"}}
    response = await api.patch("/api/connections/b24/assignees", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "unknown role 'welder'" in detail and "valid roles: mechanic, parts_manager" in detail
    assert "nothing was written" in detail
    for builtin in ("supervisor", "responsible"):
        refused = await api.patch("/api/connections/b24/assignees", json={"roles": {builtin: "9"}})
        assert refused.status_code == 422 and f"roles.{builtin}" in refused.json()["detail"]
    assert await stored_settings(database_url) == ORIGINAL


async def test_roles_need_a_provisioned_template_that_declares_them(
    api: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    await seed(database_url, tmp_path, templates=(TYPICAL,))
    assert (await api.get("/api/connections/b24/assignees")).json()["available_roles"] == []
    response = await api.patch("/api/connections/b24/assignees", json={"roles": {"mechanic": "17"}})
    assert response.status_code == 422
    assert "no template provisioned in connection 'b24' declares roles" in response.json()["detail"]
    assert await stored_settings(database_url) == ORIGINAL


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"supervisor_id": "ivan"}, "supervisor_id: a CRM user id is a number"),
        ({"supervisor_id": ""}, "supervisor_id: a CRM user id is a number"),
        ({"roles": {"mechanic": " 17"}}, "roles.mechanic: a CRM user id is a number"),
        ({"roles": {"mechanic": "-1"}}, "roles.mechanic: a CRM user id is a number"),
        ({"supervisor_id": "42", "roles": {"mechanic": "17x"}}, "roles.mechanic"),
        ({"supervisor_id": 42}, "valid string"),
        ({"roles": None}, "valid dictionary"),
        ({"supervisor": "42"}, "Extra inputs are not permitted"),
    ],
)
async def test_bad_input_is_422_and_changes_nothing(
    api: httpx.AsyncClient, database_url: str, tmp_path: Path, body: dict[str, Any], message: str
) -> None:
    await seed(database_url, tmp_path)
    response = await api.patch("/api/connections/b24/assignees", json=body)
    assert response.status_code == 422 and message in response.text, response.text
    assert await stored_settings(database_url) == ORIGINAL


async def test_null_clears_the_supervisor_and_removes_roles(
    api: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    await seed(database_url, tmp_path)
    both = {"mechanic": "17", "parts_manager": "18"}
    assert (await api.patch("/api/connections/b24/assignees", json={"roles": both})).status_code == 200
    assert (await api.patch("/api/connections/b24/assignees", json={})).json()["roles"] == both

    cleared = await api.patch(
        "/api/connections/b24/assignees", json={"supervisor_id": None, "roles": {"mechanic": None}}
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["supervisor_id"] is None and cleared.json()["roles"] == {"parts_manager": "18"}
    without_supervisor = {k: v for k, v in ORIGINAL.items() if k != "supervisor_id"}
    assert await stored_settings(database_url) == {**without_supervisor, "roles": {"parts_manager": "18"}}

    last = await api.patch("/api/connections/b24/assignees", json={"roles": {"parts_manager": None}})
    assert last.status_code == 200 and last.json()["roles"] == {}
    assert await stored_settings(database_url) == without_supervisor


async def test_a_role_no_template_declares_any_more_can_only_be_removed(
    api: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    await seed(database_url, tmp_path)
    assert (
        await api.patch("/api/connections/b24/assignees", json={"roles": {"mechanic": "17"}})
    ).status_code == 200
    async with open_sessions(database_url) as sessions, sessions.begin() as session:
        await session.execute(delete(Funnel).where(Funnel.template_key == REPAIR))
    shown = (await api.get("/api/connections/b24/assignees")).json()
    assert shown["roles"] == {"mechanic": "17"} and shown["available_roles"] == []
    changed = await api.patch("/api/connections/b24/assignees", json={"roles": {"mechanic": "18"}})
    assert changed.status_code == 422 and "unknown role 'mechanic'" in changed.json()["detail"]
    removed = await api.patch("/api/connections/b24/assignees", json={"roles": {"mechanic": None}})
    assert removed.status_code == 200 and removed.json()["roles"] == {}
    assert "roles" not in await stored_settings(database_url)


async def test_unknown_connection_is_404(api: httpx.AsyncClient) -> None:
    for response in (
        await api.get("/api/connections/ghost/assignees"),
        await api.patch("/api/connections/ghost/assignees", json={"supervisor_id": "1"}),
    ):
        assert response.status_code == 404 and "no connection named 'ghost'" in response.json()["detail"]


# --- the rules engine -----------------------------------------------------------------------------


@pytest.fixture
def b24() -> Iterator[CRMSandbox]:
    with crm_sandbox("bitrix24") as box:
        yield box


async def test_rules_give_role_tasks_to_the_user_set_for_the_role(
    api: httpx.AsyncClient, b24: CRMSandbox, database_url: str
) -> None:
    body = {"name": "b24", "crm": "bitrix24", "webhook_url": b24.box.webhook_url, "app_token": APP_TOKEN}
    assert (await api.post("/api/connections", json=body)).status_code == 201
    provisioned = await api.post(
        "/api/connections/b24/provision", json={"template": REPAIR, "dry_run": False}
    )
    assert provisioned.status_code == 200 and provisioned.json()["applied"], provisioned.text
    assert (await api.get("/api/connections/b24/assignees")).json()["available_roles"] == REPAIR_ROLES
    patched = await api.patch("/api/connections/b24/assignees", json={"roles": {"mechanic": "17"}})
    assert patched.status_code == 200, patched.text

    deal = DealState(
        id=1, crm_deal_id="101", title="Ремонт", amount=Decimal(1000), responsible_id="3", fields={}
    )
    async with open_sessions(database_url) as sessions, sessions() as session:
        record = await service.get_connection(session, "b24")
        funnel = await session.scalar(select(Funnel).where(Funnel.template_key == REPAIR))
        assert funnel is not None
        context = await load_funnel(session, record, funnel.id)
    assert context is not None
    assert resolve_assignee(context.rules, "mechanic", deal) == ("17", "")
    user, note = resolve_assignee(context.rules, "parts_manager", deal)
    assert user == "3" and "«Менеджер по запчастям» не назначена" in note
    [task] = on_entry(
        context.rules, deal, "QUALITY_CHECK", entry_id=1, now=datetime.now(UTC), from_stage_code="REPAIR"
    )
    assert task.kind == "task" and task.payload["responsible_id"] == "17"


# --- CLI ------------------------------------------------------------------------------------------


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    settings = settings_for(tmp_path, database_url)
    return {
        "FUNNELSYNC_DATABASE_URL": database_url,
        "FUNNELSYNC_DATA_DIR": str(tmp_path / "var"),
        "FUNNELSYNC_ALLOW_PRIVATE_CRM": "true",  # the sandboxes run on 127.0.0.1
        "FUNNELSYNC_SECRET_KEY": settings.secret_key.get_secret_value() if settings.secret_key else "",
        "FUNNELSYNC_PUBLIC_URL": "http://127.0.0.1:9",
    }


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The body rows of the rich table: role code -> its other cells."""
    rows: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0] != "role":
            rows[cells[0]] = cells[1:]
    return rows


def test_cli_prints_sets_and_unsets(env: dict[str, str], database_url: str, tmp_path: Path) -> None:
    asyncio.run(seed(database_url, tmp_path))
    shown = run_cli("connections", "assignees", "b24", env=env)
    assert shown.returncode == 0, shown.stderr
    assert table_rows(shown.stdout) == {
        "supervisor": ["Руководитель / Supervisor", "5"],
        "mechanic": ["Автомеханик / Mechanic", "- (the deal's responsible user)"],
        "parts_manager": ["Менеджер по запчастям / Parts manager", "- (the deal's responsible user)"],
    }

    result = run_cli(
        "connections", "assignees", "b24", "--supervisor", "42", "--role", "mechanic=17",
        "--role", "parts_manager=18", "--json", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    both = {"mechanic": "17", "parts_manager": "18"}
    assert json.loads(result.stdout) == {
        "supervisor_id": "42",
        "roles": both,
        "available_roles": REPAIR_ROLES,
    }
    assert asyncio.run(stored_settings(database_url)) == {**ORIGINAL, "supervisor_id": "42", "roles": both}

    unset = run_cli("connections", "assignees", "b24", "--no-supervisor", "--unset-role", "mechanic", env=env)
    assert unset.returncode == 0, unset.stderr
    assert "assignees of b24 updated" in unset.stdout
    rows = table_rows(unset.stdout)
    assert rows["supervisor"][1] == rows["mechanic"][1] == "- (the deal's responsible user)"
    assert rows["parts_manager"][1] == "18"
    without_supervisor = {k: v for k, v in ORIGINAL.items() if k != "supervisor_id"}
    assert asyncio.run(stored_settings(database_url)) == {
        **without_supervisor,
        "roles": {"parts_manager": "18"},
    }
    printed = run_cli("connections", "assignees", "b24", "--json", env=env)
    assert json.loads(printed.stdout)["roles"] == {"parts_manager": "18"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "mechanic"], "--role takes CODE=USER_ID"),
        (["--role", "=17"], "--role takes CODE=USER_ID"),
        (["--role", "mechanic=17", "--role", "welder=9"], "valid roles: mechanic, parts_manager"),
        (["--unset-role", "welder"], "unknown role 'welder'"),
        (["--supervisor", "ivan"], "a CRM user id is a number"),
        (["--role", "mechanic=abc"], "roles.mechanic: a CRM user id is a number"),
        (["--supervisor", "1", "--no-supervisor"], "not both"),
        (["--role", "mechanic=1", "--unset-role", "mechanic"], "both set (--role) and removed"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(
    env: dict[str, str], database_url: str, tmp_path: Path, args: list[str], message: str
) -> None:
    asyncio.run(seed(database_url, tmp_path))
    result = run_cli("connections", "assignees", "b24", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert asyncio.run(stored_settings(database_url)) == ORIGINAL


def test_cli_unknown_connection_exits_2(env: dict[str, str]) -> None:
    result = run_cli("connections", "assignees", "ghost", "--supervisor", "1", env=env)
    assert result.returncode == 2 and "no connection named 'ghost'" in result.stderr
