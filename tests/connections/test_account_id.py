"""amoCRM: `connections check` and provisioning record the account id the CRM names; from then on a
delivery with the right URL secret but another account[id] is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from app.config import Settings
from app.connections import service
from app.main import create_app
from tests.support import web
from tests.support.crm import CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

AUTH = {"Authorization": "Bearer test-token-1234567890"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def amo() -> Iterator[CRMSandbox]:
    with crm_sandbox("amocrm") as box:
        yield box


def delivery(account_id: str, subdomain: str) -> str:
    return urlencode(
        {
            "leads[status][0][id]": "7",
            "leads[status][0][status_id]": "142",
            "leads[status][0][pipeline_id]": "3",
            "account[subdomain]": subdomain,
            "account[id]": account_id,
        }
    )


def webhook_secret(settings: Settings, database_url: str) -> str:
    async def read() -> str:
        async with open_sessions(database_url) as sessions, sessions() as session:
            record = await service.get_connection(session, "amo")
        return str(service.credentials(settings, record)["webhook_secret"])

    return asyncio.run(read())


def test_check_records_the_account_id_and_webhooks_of_another_account_are_refused(
    amo: CRMSandbox, database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, database_url)
    config = amo.box.config
    body = {"name": "amo", "crm": "amocrm", "subdomain": config.subdomain, "base_url": amo.url}
    with (
        serve_asgi(create_app(settings)) as url,
        web.client(base_url=url, headers=AUTH, timeout=60) as api,
    ):
        assert api.post("/api/connections", json={**body, "token": config.token}).status_code == 201
        assert "account_id" not in api.get("/api/connections/amo").json()["settings"]
        assert api.post("/api/connections/amo/check").json()["ok"]
        assert api.get("/api/connections/amo").json()["settings"]["account_id"] == str(config.account_id)

        hook = f"/webhooks/amocrm/amo/{webhook_secret(settings, database_url)}"
        other = api.post(hook, content=delivery("29085955", config.subdomain), headers=FORM)
        assert other.status_code == 401 and "does not match this connection" in other.json()["detail"]
        own = api.post(hook, content=delivery(str(config.account_id), config.subdomain), headers=FORM)
        assert own.status_code == 200, own.text


def test_provisioning_records_the_account_id(amo: CRMSandbox, database_url: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, database_url)
    config = amo.box.config
    body = {"name": "amo", "crm": "amocrm", "subdomain": config.subdomain, "base_url": amo.url}
    with (
        serve_asgi(create_app(settings)) as url,
        web.client(base_url=url, headers=AUTH, timeout=60) as api,
    ):
        assert api.post("/api/connections", json={**body, "token": config.token}).status_code == 201
        request = {"template": "general.typical", "dry_run": True}
        assert api.post("/api/connections/amo/provision", json=request).status_code == 200
        assert (
            "account_id" not in api.get("/api/connections/amo").json()["settings"]
        )  # a dry run writes nothing
        applied = api.post("/api/connections/amo/provision", json={**request, "dry_run": False})
        assert applied.status_code == 200 and applied.json()["applied"], applied.text
        assert api.get("/api/connections/amo").json()["settings"]["account_id"] == str(config.account_id)
