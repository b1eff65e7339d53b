"""No secret in plain text (issue #16 item 4): a demo-like run leaves no credential in the SQLite
file or in any log line; the redaction of error texts, the stripping of stored bodies and the file
modes, each on its own."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from app.config import Settings
from app.connections import service as connections
from app.connections.registry import ConnectorRegistry
from app.db import create_engine
from app.logging_filters import ACCESS_LOGGER, RedactSecrets, install_log_redaction, redact_log_text
from app.main import create_app
from app.migrate import upgrade
from app.scheduler import Runtime, run_until_idle
from app.security import api_token, secret_key
from app.webhooks.service import body_preview, strip_token
from connectors.base import Retryable
from connectors.http import BITRIX24_STANDARD, ThrottledClient, redact, redact_error
from tests.support import web
from tests.support.crm import CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

WEBHOOK_CODE = "Wq7Zk2Mx9Pv4Bn8R"
APP_TOKEN = "b24-application-token-5Yh3Jd"
AMO_TOKEN = "amo-long-lived-token-Lp6Cs1"
AUTH = {"Authorization": "Bearer test-token-1234567890"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# --- the redaction function and the body stripping -------------------------------------------------


def test_redact_replaces_webhook_codes_and_known_secrets() -> None:
    text = "network error calling https://acme.bitrix24.ru/rest/12/Wq7Zk2Mx9Pv4Bn8R/crm.deal.get: boom tok-123456"
    assert redact(text, ["tok-123456", None, "ab"]) == (
        "network error calling https://acme.bitrix24.ru/rest/12/***/crm.deal.get: boom ***"
    )
    # An OAuth REST base (no user id and code) and short secrets are left alone.
    assert redact("https://acme.bitrix24.ru/rest/crm.deal.get ab", ["ab"]) == (
        "https://acme.bitrix24.ru/rest/crm.deal.get ab"
    )


def test_redact_error_rewrites_message_text_and_args() -> None:
    error = redact_error(Retryable("calling https://p/rest/1/abcdef123/x failed", crm_code="NETWORK"))
    assert error.message == error.crm_text == str(error) == "calling https://p/rest/1/***/x failed"
    assert error.crm_code == "NETWORK"


def test_a_network_error_names_no_webhook_code() -> None:
    async def call() -> str:
        client = ThrottledClient("", "test:secrets", BITRIX24_STANDARD.scaled(100), timeout=2)
        try:
            await client.request("POST", f"http://127.0.0.1:9/rest/1/{WEBHOOK_CODE}/crm.deal.get")
        except Retryable as exc:
            return f"{exc} {exc.crm_text}"
        finally:
            await client.aclose()
        raise AssertionError("the call to a closed port succeeded")

    text = asyncio.run(call())
    assert "/rest/1/***/crm.deal.get" in text and WEBHOOK_CODE not in text


BITRIX_FORM = (
    b"event=ONCRMDEALUPDATE&data%5BFIELDS%5D%5BID%5D=5&ts=1700000000&auth%5Bdomain%5D=acme.bitrix24.ru"
    b"&auth%5Bapplication_token%5D=" + APP_TOKEN.encode() + b"&auth%5Bmember_id%5D=m1"
)


@pytest.mark.parametrize(
    ("body", "stripped"),
    [
        (BITRIX_FORM, BITRIX_FORM.replace(APP_TOKEN.encode(), b"***")),
        (b"auth[application_token]=tok&event=X", b"auth[application_token]=***&event=X"),
        (
            b'{"event": "X", "auth": {"application_token": "t\\"ok", "domain": "d"}}',
            b'{"event": "X", "auth": {"application_token": "***", "domain": "d"}}',
        ),
        # amoCRM bodies carry no token (the secret is in the URL): unchanged, byte for byte.
        (b"leads%5Bstatus%5D%5B0%5D%5Bid%5D=7&account%5Bid%5D=29085955", None),
        (b"event=X&xauth[application_token]=not-the-field", None),
    ],
)
def test_strip_token_replaces_only_the_token(body: bytes, stripped: bytes | None) -> None:
    assert strip_token(body) == (body if stripped is None else stripped)


def test_previews_of_old_rows_are_redacted_even_when_cut_inside_the_token() -> None:
    assert APP_TOKEN not in body_preview(BITRIX_FORM)
    assert body_preview(b'{"auth": {"application_token": "' + APP_TOKEN[:10].encode()) == (
        '{"auth": {"application_token": "***"'
    )


def test_the_access_log_filter_redacts_the_webhook_secret() -> None:
    record = logging.LogRecord(
        ACCESS_LOGGER, logging.INFO, "h11_impl.py", 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/webhooks/amocrm/sales/s3cr3t-value?x=1", "1.1", 200), None,
    )  # fmt: skip
    assert RedactSecrets().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "POST /webhooks/amocrm/sales/***?x=1 HTTP/1.1" 200'
    assert redact_log_text("/webhooks/bitrix24/sales") == "/webhooks/bitrix24/sales"


# --- file modes ----------------------------------------------------------------------------------


def test_data_folder_and_files_are_the_owners_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    url = f"sqlite+aiosqlite:///{data_dir / 'funnelsync.db'}"
    upgrade(url)
    settings = settings_for(data_dir, url).model_copy(update={"api_token": None, "secret_key": None})
    api_token(settings)
    secret_key(settings)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in ("funnelsync.db", "api-token", "secret.key"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    # A database file an older version left readable by all is narrowed when it is next opened.
    (data_dir / "funnelsync.db").chmod(0o644)
    asyncio.run(create_engine(url).dispose())
    assert stat.S_IMODE((data_dir / "funnelsync.db").stat().st_mode) == 0o600


# --- a demo-like run -----------------------------------------------------------------------------


@pytest.fixture
def redacted_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """What `serve` installs, with uvicorn's access lines reaching caplog; undone afterwards."""
    factory = logging.getLogRecordFactory()
    access = logging.getLogger(ACCESS_LOGGER)
    level, propagate = access.level, access.propagate
    install_log_redaction()
    caplog.set_level(logging.INFO)
    try:
        yield caplog
    finally:
        logging.setLogRecordFactory(factory)
        for added in [f for f in access.filters if isinstance(f, RedactSecrets)]:
            access.removeFilter(added)
        access.setLevel(level)
        access.propagate = propagate


def _show_access_log() -> None:
    # serve_asgi runs uvicorn at "warning" with its own handlers: let its access lines through.
    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(logging.INFO)
    access.propagate = True


def test_no_secret_in_the_database_file_or_the_logs(
    tmp_path: Path, redacted_logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    url = f"sqlite+aiosqlite:///{data_dir / 'funnelsync.db'}"
    upgrade(url)
    settings = settings_for(data_dir, url)
    with (
        crm_sandbox("amocrm", token=AMO_TOKEN) as amo,
        serve_asgi(create_app(settings)) as service_url,
        web.client(base_url=service_url, headers=AUTH, timeout=60) as api,
    ):
        with crm_sandbox("bitrix24", webhook_code=WEBHOOK_CODE, app_token=APP_TOKEN) as b24:
            _show_access_log()  # after the last uvicorn server started: each one configures logging
            _add_connections(api, b24.box.webhook_url, amo.url, amo.box.config.subdomain)
            amo_secret = asyncio.run(_amo_secret(settings, url))
            deal = b24.box.create_deal(TITLE="Secrets", STAGE_ID="NEW")
            lead = amo.create_deal("Secrets", *_amo_stage(amo))
            _deliver(api, b24.box.config.domain, deal, amo_secret, amo.box.config, lead)
            asyncio.run(_run_worker(settings, url))
        # The portal is gone: the CRM calls fail with errors that quote the webhook URL.
        checked = api.post("/api/connections/b24/check")
        assert checked.status_code >= 400, checked.text
        _deliver_bitrix24(api, b24.box.config.domain, deal, ts=1700000999)
        asyncio.run(_run_worker(settings, url))
        shown = [api.get("/api/events").text, api.get("/api/connections").text, checked.text]
    secrets = {
        "webhook code": WEBHOOK_CODE,
        "application token": APP_TOKEN,
        "amoCRM webhook secret": amo_secret,
        "amoCRM token": AMO_TOKEN,
        "API token": "test-token-1234567890",
        "secret key": settings.secret_key.get_secret_value() if settings.secret_key else "",
    }
    database = b"".join(path.read_bytes() for path in data_dir.iterdir() if path.is_file())
    logs = "\n".join([redacted_logs.text, *capfd.readouterr(), *shown])
    assert "/webhooks/amocrm/amo/***" in redacted_logs.text  # the access log was captured
    assert "/rest/1/***/" in "\n".join(shown)  # a CRM error quoting the URL was recorded and shown
    for what, secret in secrets.items():
        assert secret.encode() not in database, f"the {what} is in the database file"
        assert secret not in logs, f"the {what} is in a log line or an answer"


def _add_connections(api: httpx.Client, webhook_url: str, amo_url: str, subdomain: str) -> None:
    b24 = {"name": "b24", "crm": "bitrix24", "webhook_url": webhook_url, "app_token": APP_TOKEN}
    amo = {"name": "amo", "crm": "amocrm", "subdomain": subdomain, "token": AMO_TOKEN, "base_url": amo_url}
    for body in (b24, amo):
        created = api.post("/api/connections", json=body)
        assert created.status_code == 201, created.text
        assert api.post(f"/api/connections/{body['name']}/check").json()["ok"]


async def _amo_secret(settings: Settings, url: str) -> str:
    async with open_sessions(url) as sessions, sessions() as session:
        record = await connections.get_connection(session, "amo")
        return str(connections.credentials(settings, record)["webhook_secret"])


def _amo_stage(amo: CRMSandbox) -> tuple[str, str]:
    pipeline = amo.box.main_pipeline()
    return str(pipeline["id"]), str(pipeline["_embedded"]["statuses"][1]["id"])


def _deliver(api: httpx.Client, domain: str, deal: int, amo_secret: str, amo: Any, lead: str) -> None:
    _deliver_bitrix24(api, domain, deal, ts=1700000000)
    json_body = {
        "event": "ONCRMDEALUPDATE",
        "data": {"FIELDS": {"ID": str(deal)}},
        "ts": "1700000001",
        "auth": {"domain": domain, "application_token": APP_TOKEN},
    }
    sent = api.post(
        "/webhooks/bitrix24/b24", content=json.dumps(json_body), headers={"Content-Type": "application/json"}
    )
    assert sent.status_code == 200, sent.text
    amo_body = {
        "leads[status][0][id]": lead,
        "leads[status][0][status_id]": "142",
        "leads[status][0][pipeline_id]": "1",
        "account[subdomain]": amo.subdomain,
        "account[id]": str(amo.account_id),
    }
    sent = api.post(f"/webhooks/amocrm/amo/{amo_secret}", content=urlencode(amo_body), headers=FORM)
    assert sent.status_code == 200, sent.text


def _deliver_bitrix24(api: httpx.Client, domain: str, deal: int, ts: int) -> None:
    body = {
        "event": "ONCRMDEALUPDATE",
        "data[FIELDS][ID]": str(deal),
        "ts": str(ts),
        "auth[domain]": domain,
        "auth[application_token]": APP_TOKEN,
    }
    sent = api.post("/webhooks/bitrix24/b24", content=urlencode(body), headers=FORM)
    assert sent.status_code == 200, sent.text


async def _run_worker(settings: Settings, url: str) -> None:
    async with open_sessions(url) as sessions:
        runtime = Runtime(sessions, settings, ConnectorRegistry(sessions, settings))
        try:
            await run_until_idle(runtime)
        finally:
            await runtime.connectors.aclose()


# --- migration 0007 ------------------------------------------------------------------------------

SEED_0006 = [
    "INSERT INTO connections (id, name, crm, base_url, credentials_encrypted, settings, status, created_at,"
    " updated_at) VALUES (1, 'b24', 'bitrix24', 'https://acme.bitrix24.ru/rest/1/Wq7Zk2Mx9Pv4Bn8R/', 'x', '{}',"
    " 'active', '2026-05-01 09:00:00', '2026-05-01 09:00:00'), (2, 'oauth', 'bitrix24', 'https://b.bitrix24.ru',"
    " 'x', '{}', 'active', '2026-05-01 09:00:00', '2026-05-01 09:00:00'), (3, 'amo', 'amocrm',"
    " 'https://a.amocrm.ru', 'x', '{}', 'active', '2026-05-01 09:00:00', '2026-05-01 09:00:00')",
    "INSERT INTO inbox_events (id, connection_id, dedupe_key, content_type, body, status, error, attempts,"
    " deals, received_at) VALUES (1, 1, 'k1', 'x', :b24, 'failed',"
    " 'network error calling https://acme.bitrix24.ru/rest/1/Wq7Zk2Mx9Pv4Bn8R/batch', 0, 0,"
    " '2026-05-01 09:00:00'), (2, 3, 'k2', 'x', :amo, 'done', NULL, 0, 0, '2026-05-01 09:00:00')",
]
AMO_BODY = b"leads%5Bstatus%5D%5B0%5D%5Bid%5D=7&auth%5Bapplication_token%5D=kept-for-amocrm"


def test_0007_moves_secrets_out_of_plain_columns(empty_database_url: str) -> None:
    """The webhook URL in base_url becomes its origin (the credentials already hold the URL), stored
    Bitrix24 bodies lose their token, recorded errors their webhook code; other rows stay."""
    from sqlalchemy import text

    upgrade(empty_database_url, "0006")

    async def run(statements: list[str]) -> list[Any]:
        engine = create_engine(empty_database_url)
        try:
            async with engine.begin() as connection:
                for statement in statements:
                    await connection.execute(text(statement), {"b24": BITRIX_FORM, "amo": AMO_BODY})
                urls = (await connection.execute(text("SELECT base_url FROM connections ORDER BY id"))).all()
                events = (
                    await connection.execute(text("SELECT body, error FROM inbox_events ORDER BY id"))
                ).all()
                return [[row[0] for row in urls], [(bytes(row[0]), row[1]) for row in events]]
        finally:
            await engine.dispose()

    asyncio.run(run(SEED_0006))
    upgrade(empty_database_url, "0007")
    urls, events = asyncio.run(run([]))
    assert urls == ["https://acme.bitrix24.ru", "https://b.bitrix24.ru", "https://a.amocrm.ru"]
    assert events == [
        (
            BITRIX_FORM.replace(APP_TOKEN.encode(), b"***"),
            "network error calling https://acme.bitrix24.ru/rest/1/***/batch",
        ),
        (AMO_BODY, None),
    ]
