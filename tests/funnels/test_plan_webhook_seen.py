"""A Bitrix24 outgoing webhook is registered by hand: once events carrying the connection's
application token arrive, the plan shows it as in place ("=") instead of asking for it again, in
the CLI's English and the dashboard's Russian; a new token asks again until its events arrive."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.config import Settings
from app.connections import service as connections
from app.connections.models import Connection
from app.funnels.plan import PlanContext, PlanItem, plan_provisioning
from app.main import create_app
from tests.funnels.test_plan_cases import B24_CTX, B24_MAPPING, TEMPLATE, b24_state
from tests.support import web
from tests.support.crm import CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

AUTH = {"Authorization": "Bearer test-token-1234567890"}


def webhook_item(ctx: PlanContext) -> PlanItem:
    plan = plan_provisioning(TEMPLATE, b24_state(), B24_MAPPING, ctx)
    (item,) = plan.of("webhook")
    return item


def test_a_hand_registered_webhook_is_manual_until_its_events_arrive() -> None:
    waiting = webhook_item(B24_CTX)
    assert (waiting.symbol, waiting.action) == ("!", "manual")
    assert "register it by hand" in (waiting.reason or "")

    seen = webhook_item(replace(B24_CTX, webhook_seen_at=datetime(2026, 11, 2, 9, 30, tzinfo=UTC)))
    assert (seen.symbol, seen.action) == ("=", "unchanged")
    assert seen.reason == (
        "registered by hand: events with the connection's application token arrive (first at 2026-11-02 09:30 UTC)"
    )
    assert seen.as_json()["why"] == {"key": "plan_webhook_seen", "params": {"at": "2026-11-02 09:30 UTC"}}


@dataclass
class Service:
    url: str
    sandbox: CRMSandbox
    settings: Settings
    database_url: str

    def plan(self) -> dict[str, Any]:
        response = web.post(
            f"{self.url}/api/connections/b24/provision",
            json={"template": "general.typical", "dry_run": True},
            headers=AUTH,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        (item,) = [i for i in response.json()["plan"]["items"] if i["kind"] == "webhook"]
        return dict(item)

    def store_app_token(self, token: str) -> None:
        async def store() -> None:
            async with open_sessions(self.database_url) as sessions, sessions.begin() as session:
                record = await session.scalar(select(Connection).where(Connection.name == "b24"))
                assert record is not None
                values = connections.credentials(self.settings, record)
                connections.store_credentials(self.settings, record, {**values, "app_token": token})

        asyncio.run(store())


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[Service]:
    settings = settings_for(tmp_path, database_url)
    with crm_sandbox("bitrix24") as sandbox:

        async def add() -> None:
            async with open_sessions(database_url) as sessions, sessions.begin() as session:
                session.add(sandbox.connection(settings, name="b24"))

        asyncio.run(add())
        with serve_asgi(create_app(settings)) as url:
            yield Service(url, sandbox, settings, database_url)


def test_events_with_the_token_make_the_webhook_clean_until_the_token_changes(service: Service) -> None:
    assert service.plan()["action"] == "manual"

    # The portal's admin registers the outgoing webhook by hand; a manager then creates a deal.
    service.sandbox.box.config.webhook_url = f"{service.url}/webhooks/bitrix24/b24"
    service.sandbox.create_deal("Заявка", "0", "NEW")
    service.sandbox.box.wait_for_stats(webhooks_sent=1)

    seen = service.plan()
    assert (seen["symbol"], seen["action"]) == ("=", "unchanged")
    assert seen["why"]["key"] == "plan_webhook_seen"

    # The dashboard says it in Russian.
    with web.client(base_url=service.url, timeout=60) as client:
        assert client.post("/login", data={"token": "test-token-1234567890", "next": "/"}).status_code == 303
        page = client.get("/templates/general.typical").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf
        plan_page = client.post(
            "/templates/general.typical/provision", data={"csrf_token": csrf.group(1), "connection": "b24"}
        ).text
    row = re.search(
        r'<tr class="plan-unchanged">\s*<td><code[^>]*>=</code></td><td>вебхук</td>.*?</tr>', plan_page, re.S
    )
    assert row and "зарегистрирован вручную" in row.group(0)

    # A new application token: its events have not arrived yet, so the plan asks again.
    service.store_app_token("a-brand-new-application-token")
    assert service.plan()["action"] == "manual"
