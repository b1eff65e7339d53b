"""A company's own template provisioned from a file (`funnelsync provision CONN file.yaml`), from the
API (`template_yaml`) and from the dashboard's upload form: validated first (every problem, nothing
written), then planned and applied into the Bitrix24 sandbox over real HTTP, and kept with the
connection so later plans and rules read the same definition."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.connections.models import Connection
from app.library.service import MAX_TEMPLATE_BYTES, OWN_TEMPLATES, template_for
from app.main import create_app
from funnel_templates.loader import library
from tests.support import web
from tests.support.cli import run_cli
from tests.support.crm import APP_TOKEN, FAST_RETRY_ENV, CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

OWN_KEY = "acme.sales"


@pytest.fixture
def b24() -> Iterator[CRMSandbox]:
    with crm_sandbox("bitrix24") as box:
        yield box


def own_template(tmp_path: Path, env: dict[str, str] | None = None) -> Path:
    """`templates new --from general.typical --key acme.sales`, with one stage renamed."""
    path = tmp_path / "acme.sales.yaml"
    made = run_cli(
        "templates", "new", "--from", "general.typical", "--key", OWN_KEY, str(path), "--force", env=env
    )
    assert made.returncode == 0, made.stderr
    text = path.read_text(encoding="utf-8").replace("ru: Лиды,", "ru: Входящие лиды,", 1)
    path.write_text(text, encoding="utf-8")
    return path


def broken(tmp_path: Path) -> Path:
    """Two mistakes in different places: an unknown colour and an SLA escalating to nobody."""
    text = own_template(tmp_path).read_text(encoding="utf-8")
    text = text.replace('color: "#d6eaff"', 'color: "#123456"', 1)
    text = text.replace("escalate_to: supervisor", "escalate_to: nobody", 1)
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, b24: CRMSandbox) -> dict[str, str]:
    variables = {
        "FUNNELSYNC_DATA_DIR": str(tmp_path / "var"),
        "FUNNELSYNC_ALLOW_PRIVATE_CRM": "true",
        "FUNNELSYNC_PUBLIC_URL": "http://127.0.0.1:9",
        **FAST_RETRY_ENV,
    }
    added = run_cli(
        "connections", "add", "b24", "--crm", "bitrix24", "--webhook-url", b24.box.webhook_url,
        "--app-token", APP_TOKEN, env=variables,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    return variables


def stored(tmp_path: Path) -> tuple[dict[str, str], list[str]]:
    """The own templates kept with connection b24, and the funnels' template keys."""
    with sqlite3.connect(tmp_path / "var" / "funnelsync.db") as db:
        [(settings,)] = db.execute("SELECT settings FROM connections WHERE name = 'b24'").fetchall()
        keys = [k for (k,) in db.execute("SELECT template_key FROM funnels ORDER BY id")]
    return json.loads(settings).get(OWN_TEMPLATES, {}), keys


def test_provision_a_file_plans_applies_and_keeps_it(
    env: dict[str, str], b24: CRMSandbox, tmp_path: Path
) -> None:
    path = own_template(tmp_path)
    b24.reset_stats()
    dry = run_cli("provision", "b24", str(path), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "acme.sales" in dry.stdout and "+ stage" in dry.stdout and "Входящие лиды" in dry.stdout
    assert b24.writes() == 0 and stored(tmp_path) == ({}, [])

    applied = run_cli("provision", "b24", str(path), "--json", env=env)
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["applied"]
    own, funnels = stored(tmp_path)
    assert funnels == [OWN_KEY] and own == {OWN_KEY: path.read_text(encoding="utf-8")}

    b24.reset_stats()
    rerun = run_cli("provision", "b24", str(path), env=env)
    assert rerun.returncode == 0 and "Nothing to change." in rerun.stdout
    assert b24.writes() == 0


def test_a_bad_file_exits_2_naming_every_problem_and_writes_nothing(
    env: dict[str, str], b24: CRMSandbox, tmp_path: Path
) -> None:
    path = broken(tmp_path)
    b24.reset_stats()
    result = run_cli("provision", "b24", str(path), env=env)
    assert result.returncode == 2
    assert re.search(rf"{re.escape(str(path))}:\d+: template acme.sales: stages.LEADS.color: ", result.stderr)
    assert re.search(
        r":\d+: template acme.sales: stages.NEW_REQUEST.sla: escalates to undeclared role", result.stderr
    )
    assert "nothing was written" in result.stderr
    assert b24.box.stats()["requests"] == 0 and stored(tmp_path) == ({}, [])


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("missing.yaml", "no template file 'missing.yaml'"),
        ("nope.nope", "no template with key 'nope.nope'"),
    ],
)
def test_a_missing_file_or_key_exits_2(env: dict[str, str], argument: str, message: str) -> None:
    result = run_cli("provision", "b24", argument, env=env)
    assert result.returncode == 2 and message in result.stderr


def test_a_file_under_a_library_key_is_refused_unless_it_is_that_template(
    env: dict[str, str], b24: CRMSandbox, tmp_path: Path
) -> None:
    changed = tmp_path / "typical.yaml"
    text = (
        own_template(tmp_path).read_text(encoding="utf-8").replace(f"key: {OWN_KEY}", "key: general.typical")
    )
    changed.write_text(text.replace("niche: acme", "niche: general"), encoding="utf-8")
    result = run_cli("provision", "b24", str(changed), "--dry-run", env=env)
    assert result.returncode == 2 and "belongs to a library template" in result.stderr

    # The shipped file itself is the library template: provisioned as the key would be, not kept.
    copy = tmp_path / "same.yml"
    run_cli("templates", "new", "--from", "general.typical", "--key", "general.typical", str(copy))
    assert run_cli("provision", "b24", str(copy), env=env).returncode == 0
    assert stored(tmp_path) == ({}, ["general.typical"])


# --- the API and the dashboard's upload ----------------------------------------------------------


@pytest.fixture
def dashboard(database_url: str, tmp_path: Path, b24: CRMSandbox) -> Iterator[tuple[httpx.Client, str]]:
    settings = settings_for(tmp_path, database_url)

    async def add() -> None:
        async with open_sessions(database_url) as sessions, sessions.begin() as session:
            session.add(b24.connection(settings, name="b24"))

    asyncio.run(add())
    with serve_asgi(create_app(settings)) as url, web.client(base_url=url, timeout=60) as client:
        yield client, database_url


async def connection_row(database_url: str) -> Connection:
    async with open_sessions(database_url) as sessions, sessions() as session:
        record = await session.get(Connection, 1)
        assert record is not None
        return record


AUTH = {"Authorization": "Bearer test-token-1234567890"}


def test_the_api_validates_plans_and_keeps_an_own_template(
    dashboard: tuple[httpx.Client, str], b24: CRMSandbox, tmp_path: Path
) -> None:
    client, database_url = dashboard
    url = "/api/connections/b24/provision"
    bad = client.post(url, json={"template_yaml": broken(tmp_path).read_text()}, headers=AUTH)
    assert bad.status_code == 422
    fields = {p["field"] for p in bad.json()["detail"]["problems"]}
    assert {"stages.LEADS.color", "stages.NEW_REQUEST.sla"} <= fields
    assert all(p["line"] for p in bad.json()["detail"]["problems"])
    huge = client.post(url, json={"template_yaml": "#" * (MAX_TEMPLATE_BYTES + 1)}, headers=AUTH)
    assert huge.status_code == 413 and "at most 256 KB" in huge.text
    both = client.post(url, json={"template": "general.typical", "template_yaml": "x"}, headers=AUTH)
    assert both.status_code == 422 and "exactly one of" in both.text
    assert b24.writes() == 0

    text = own_template(tmp_path).read_text(encoding="utf-8")
    plan = client.post(url, json={"template_yaml": text}, headers=AUTH)
    assert plan.status_code == 200 and plan.json()["plan"]["template"] == OWN_KEY
    assert OWN_TEMPLATES not in (asyncio.run(connection_row(database_url)).settings or {})
    applied = client.post(url, json={"template_yaml": text, "dry_run": False}, headers=AUTH)
    assert applied.status_code == 200 and applied.json()["applied"]
    record = asyncio.run(connection_row(database_url))
    kept = template_for(record, OWN_KEY)
    assert kept is not None and kept.stages[0].name.ru == "Входящие лиды"
    assert OWN_KEY not in library()  # kept with the connection, not added to everyone's library


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match
    return match.group(1)


def test_the_upload_form_refuses_big_broken_and_unsigned_files(
    dashboard: tuple[httpx.Client, str], b24: CRMSandbox, tmp_path: Path
) -> None:
    client, _ = dashboard
    assert client.post("/login", data={"token": "test-token-1234567890", "next": "/"}).status_code == 303
    token = _csrf(client.get("/templates/upload?lang=en").text)
    form = {"csrf_token": token, "connection": "b24"}
    files = {"file": ("broken.yaml", broken(tmp_path).read_bytes(), "application/yaml")}
    assert client.post("/templates/upload", data={"connection": "b24"}, files=files).status_code == 403
    invalid = client.post("/templates/upload", data=form, files=files)
    assert invalid.status_code == 422
    assert 'data-problem="stages.LEADS.color"' in invalid.text
    assert 'data-problem="stages.NEW_REQUEST.sla"' in invalid.text
    big = {"file": ("big.yaml", b"#" * (MAX_TEMPLATE_BYTES + 1), "application/yaml")}
    too_big = client.post("/templates/upload", data=form, files=big)
    assert too_big.status_code == 413 and "at most 256 KB" in too_big.text
    assert b24.writes() == 0
