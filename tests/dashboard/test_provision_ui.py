"""Provisioning from the dashboard: the plan first with nothing written, then apply; CSRF-checked."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.support import web
from tests.support.crm import FAST_RETRY, CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi


@pytest.fixture
def ui(database_url: str, tmp_path: Path) -> Iterator[tuple[httpx.Client, CRMSandbox]]:
    settings = settings_for(tmp_path, database_url)
    with crm_sandbox("bitrix24") as sandbox:

        async def add() -> None:
            async with open_sessions(database_url) as sessions, sessions.begin() as session:
                session.add(sandbox.connection(settings, name="b24"))

        asyncio.run(add())
        with serve_asgi(create_app(settings)) as url, web.client(base_url=url, timeout=60) as client:
            assert (
                client.post("/login", data={"token": "test-token-1234567890", "next": "/"}).status_code == 303
            )
            yield client, sandbox


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match
    return match.group(1)


def test_plan_then_apply_from_the_template_page(ui: tuple[httpx.Client, CRMSandbox]) -> None:
    client, sandbox = ui
    page = client.get("/templates/general.typical").text
    assert '<option value="b24">b24 (bitrix24)</option>' in page
    token = csrf(page)

    assert client.post("/templates/general.typical/provision", data={"connection": "b24"}).status_code == 403
    sandbox.reset_stats()
    plan = client.post(
        "/templates/general.typical/provision", data={"csrf_token": token, "connection": "b24"}
    )
    assert plan.status_code == 200
    assert plan.text.count('class="plan-create"') >= 12 and "Применить план" in plan.text
    assert sandbox.writes() == 0  # the plan alone writes nothing

    applied = client.post(
        "/templates/general.typical/provision",
        data={"csrf_token": csrf(plan.text), "connection": "b24", "apply": "1"},
    )
    assert applied.status_code == 200 and "План применён." in applied.text
    assert sandbox.writes() > 0
    again = client.post(
        "/templates/general.typical/provision", data={"csrf_token": token, "connection": "b24"}
    )
    assert (
        'class="plan-create"' not in again.text and "Применить план" not in again.text
    )  # nothing left to do

    missing = client.post(
        "/templates/general.typical/provision", data={"csrf_token": token, "connection": "nope"}
    )
    assert missing.status_code == 404 and "Подключения с именем &#39;nope&#39; нет" in missing.text


def test_a_crm_outage_is_a_readable_page_not_a_500(ui: tuple[httpx.Client, CRMSandbox]) -> None:
    client, sandbox = ui
    token = csrf(client.get("/templates/general.typical?lang=en").text)
    sandbox.box.fault("http_503", count=10_000)
    page = client.post(
        "/templates/general.typical/provision", data={"csrf_token": token, "connection": "b24", "apply": "1"}
    )
    assert page.status_code == 503
    assert "<h1>The CRM failed</h1>" in page.text
    assert "the CRM failed during provisioning (unavailable, HTTP 503): " in page.text
    assert "503 Service Temporarily Unavailable" in page.text and "nothing was written" in page.text
    assert "Traceback" not in page.text and "&lt;html" not in page.text
    sandbox.clear_faults()
    assert sandbox.writes() == 0


def test_an_outage_while_applying_shows_the_plan_and_how_to_finish(
    ui: tuple[httpx.Client, CRMSandbox],
) -> None:
    client, sandbox = ui
    token = csrf(client.get("/templates/general.typical?lang=en").text)
    sandbox.reset_stats()
    plan = client.post(
        "/templates/general.typical/provision", data={"csrf_token": token, "connection": "b24"}
    )
    assert plan.status_code == 200
    # Down at the first write, for it and all its retries (the app's default policy).
    sandbox.box.fault("http_503", count=FAST_RETRY.attempts, after=int(sandbox.box.stats()["requests"]))
    failed = client.post(
        "/templates/general.typical/provision", data={"csrf_token": token, "connection": "b24", "apply": "1"}
    )
    assert failed.status_code == 503
    assert "Applying failed: the CRM failed during provisioning (unavailable): " in failed.text
    assert "apply the plan again to complete it" in failed.text and 'class="plan-create"' in failed.text
    done = client.post(
        "/templates/general.typical/provision", data={"csrf_token": token, "connection": "b24", "apply": "1"}
    )
    assert done.status_code == 200 and "The plan was applied." in done.text
