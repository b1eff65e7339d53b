"""Webhook receivers: authenticate, store before answering, refuse forgeries, keep what cannot be
parsed, recognise duplicates. Real HTTP, both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from app.connections import service as connections
from app.main import create_app
from connectors.amocrm.descriptor import AmoCRMConnectionCreate
from connectors.bitrix24.descriptor import Bitrix24ConnectionCreate
from tests.support import web
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


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[Service]:
    settings = settings_for(tmp_path, database_url)
    b24 = connections.build_record(
        settings,
        Bitrix24ConnectionCreate(
            name="b24",
            crm="bitrix24",
            webhook_url=f"https://{DOMAIN}/rest/1/abc123/",
            app_token=SecretStr(APP_TOKEN),
        ),
        None,
    )
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


def test_bitrix24_event_is_stored_once(service: Service) -> None:
    first = web.post(f"{service.url}/webhooks/bitrix24/b24", content=bitrix_body(), headers=FORM)
    assert first.status_code == 200 and first.json() == {"status": "accepted"}
    again = web.post(f"{service.url}/webhooks/bitrix24/b24", content=bitrix_body(), headers=FORM)
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}
    assert service.inbox() == [("pending", None)]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (bitrix_body(token="forged"), "application_token"),
        # A valid token from another domain is a renamed portal, accepted and recorded
        # (tests/connections/test_domain_moves.py); a forged token from it is refused here.
        (bitrix_body(token="forged", domain="evil.bitrix24.ru"), "application_token"),
        ("not a form at all \x00", "not a Bitrix24 event"),
    ],
)
def test_forged_bitrix24_requests_are_refused_and_not_stored(
    service: Service, body: str, reason: str
) -> None:
    response = web.post(f"{service.url}/webhooks/bitrix24/b24", content=body, headers=FORM)
    assert response.status_code == 401 and reason in response.json()["detail"]
    assert service.inbox() == []


def test_amocrm_secret_and_account_are_checked(service: Service) -> None:
    wrong = web.post(f"{service.url}/webhooks/amocrm/amo/not-the-secret", content=amo_body(), headers=FORM)
    assert wrong.status_code == 401 and "secret" in wrong.json()["detail"]
    # Another subdomain with the right secret is a renamed account: accepted and recorded
    # (tests/connections/test_domain_moves.py); with a wrong secret it is refused like any other.
    renamed = web.post(
        f"{service.url}/webhooks/amocrm/amo/not-the-secret", content=amo_body(subdomain="evil"), headers=FORM
    )
    assert renamed.status_code == 401 and "secret" in renamed.json()["detail"]
    assert service.inbox() == []
    ok = web.post(f"{service.url}/webhooks/amocrm/amo/{service.amo_secret}", content=amo_body(), headers=FORM)
    assert ok.status_code == 200 and ok.json()["status"] == "accepted"
    assert service.inbox() == [("pending", None)]


def test_unparseable_authenticated_body_is_stored_failed_and_acknowledged(service: Service) -> None:
    garbage = "leads[status][0][id]=abc&leads[status][0][status_id]=&account[subdomain]=acme"
    response = web.post(
        f"{service.url}/webhooks/amocrm/amo/{service.amo_secret}", content=garbage, headers=FORM
    )
    assert response.status_code == 200
    [(status, error)] = service.inbox()
    assert status == "failed" and error and "cannot parse webhook body" in error
    failed = web.get(f"{service.url}/api/events", params={"status": "failed"}, headers=AUTH).json()
    assert failed[0]["error"] == error and "leads[status]" in failed[0]["body_preview"]


def test_oversized_body_is_413_and_not_stored(service: Service) -> None:
    big = bitrix_body() + "&pad=" + "x" * (1024 * 1024)
    response = web.post(f"{service.url}/webhooks/bitrix24/b24", content=big, headers=FORM)
    assert response.status_code == 413
    assert service.inbox() == []


def answer(url: str, body: str) -> tuple[int, object]:
    response = web.post(url, content=body, headers=FORM)
    return response.status_code, response.json()


@pytest.mark.parametrize("body", [bitrix_body(token="wrong-token"), "not a bitrix24 event", ""])
def test_an_unknown_bitrix24_connection_is_answered_like_a_wrong_token(service: Service, body: str) -> None:
    # The answers must not tell which connection names exist: an unknown name, a connection of
    # another CRM and a wrong token all read the same.
    wrong_token = answer(f"{service.url}/webhooks/bitrix24/b24", body)
    assert wrong_token[0] == 401
    assert answer(f"{service.url}/webhooks/bitrix24/nope", body) == wrong_token
    assert answer(f"{service.url}/webhooks/bitrix24/amo", body) == wrong_token
    assert answer(f"{service.url}/webhooks/bitrix24/nope", bitrix_body()) == answer(
        f"{service.url}/webhooks/bitrix24/b24", bitrix_body(token="wrong-token")
    )
    assert service.inbox() == []


def test_an_unknown_amocrm_connection_is_answered_like_a_wrong_secret(service: Service) -> None:
    wrong_secret = answer(f"{service.url}/webhooks/amocrm/amo/wrong-secret", amo_body())
    assert wrong_secret == (401, {"detail": "webhook refused: wrong secret in the URL"})
    assert answer(f"{service.url}/webhooks/amocrm/nope/wrong-secret", amo_body()) == wrong_secret
    # Even with the right secret of another connection: the name is what is unknown.
    assert answer(f"{service.url}/webhooks/amocrm/nope/{service.amo_secret}", amo_body()) == wrong_secret
    assert answer(f"{service.url}/webhooks/amocrm/b24/{service.amo_secret}", amo_body()) == wrong_secret
    assert service.inbox() == []
