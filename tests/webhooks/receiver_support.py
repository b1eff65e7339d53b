"""The served app with a Bitrix24 and an amoCRM connection, and real-shaped bodies for them: shared by
the receiver tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from pydantic import SecretStr
from sqlalchemy import text

from app.config import Settings
from app.connections import service as connections
from app.connections.models import Connection
from app.main import create_app
from connectors.amocrm.descriptor import AmoCRMConnectionCreate
from connectors.bitrix24.descriptor import Bitrix24ConnectionCreate
from tests.support.crm import settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

APP_TOKEN = "b24-app-token"
DOMAIN = "acme.bitrix24.ru"
AUTH = {"Authorization": "Bearer test-token-1234567890"}


@dataclass
class Service:
    url: str
    amo_secret: str
    database_url: str

    def inbox(self) -> list[tuple[str, str | None]]:
        async def read() -> list[tuple[str, str | None]]:
            async with open_sessions(self.database_url) as sessions, sessions() as session:
                rows = await session.execute(text("SELECT status, error FROM inbox_events ORDER BY id"))
                return [(r[0], r[1]) for r in rows]

        return asyncio.run(read())


def bitrix24_record(settings: Settings, name: str) -> Connection:
    """A Bitrix24 connection of the portal DOMAIN whose events carry APP_TOKEN."""
    return connections.build_record(
        settings,
        Bitrix24ConnectionCreate(
            name=name,
            crm="bitrix24",
            webhook_url=f"https://{DOMAIN}/rest/1/abc123/",
            app_token=SecretStr(APP_TOKEN),
        ),
        None,
    )


@contextmanager
def served_receivers(database_url: str, tmp_path: Path) -> Iterator[Service]:
    settings = settings_for(tmp_path, database_url)
    b24 = bitrix24_record(settings, "b24")
    amo = connections.build_record(
        settings,
        AmoCRMConnectionCreate(name="amo", crm="amocrm", subdomain="acme", token=SecretStr("t")),
        None,
    )

    async def add() -> str:
        async with open_sessions(database_url) as sessions, sessions.begin() as session:
            session.add_all([b24, amo])
        return str(connections.credentials(settings, amo)["webhook_secret"])

    secret = asyncio.run(add())
    with serve_asgi(create_app(settings)) as url:
        yield Service(url, secret, database_url)


def bitrix_body(deal_id: int = 5, token: str = APP_TOKEN, domain: str = DOMAIN, ts: int = 1700000000) -> str:
    """Shaped like the real capture of an outbound ONCRMDEALUPDATE (docs/crm/bitrix24.md §4)."""
    return urlencode(
        {
            "event": "ONCRMDEALUPDATE",
            "event_handler_id": "3",
            "data[FIELDS][ID]": str(deal_id),
            "ts": str(ts),
            "auth[domain]": domain,
            "auth[client_endpoint]": f"https://{domain}/rest/",
            "auth[server_endpoint]": "https://oauth.bitrix.info/rest/",
            "auth[member_id]": "a223c6b3710f85df22e9377d6c4f7553",
            "auth[application_token]": token,
        }
    )


def amo_body(lead_id: int = 7, subdomain: str = "acme") -> str:
    return urlencode(
        {
            "leads[status][0][id]": str(lead_id),
            "leads[status][0][status_id]": "142",
            "leads[status][0][pipeline_id]": "3",
            "leads[status][0][old_status_id]": "30",
            "leads[status][0][old_pipeline_id]": "3",
            "leads[status][0][name]": "Deal",
            "leads[status][0][price]": "1000",
            "leads[status][0][responsible_user_id]": "11",
            "leads[status][0][last_modified]": "1700000000",
            "leads[status][0][date_create]": "1699990000",
            "account[subdomain]": subdomain,
            "account[id]": "29085955",
        }
    )


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
