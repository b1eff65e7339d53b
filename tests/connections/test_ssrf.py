"""A CRM address on a private, loopback, link-local or other non-global network is refused (the
credentials would go there) unless FUNNELSYNC_ALLOW_PRIVATE_CRM is on: on add (422 / exit 2, before
any credential or authorization code is sent) and again when a connector is opened (the connection
is paused, saying why)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from app.config import Settings
from app.connections import service
from app.connections.connector import AddressRefused, open_connector, refuse_private_move
from app.connections.models import Connection, ConnectionSwitch
from app.main import create_app
from connectors.amocrm.descriptor import AmoCRMConnectionCreate
from connectors.http import RatePolicy, RedirectRefused, ThrottledClient
from tests.support import web
from tests.support.cli import run_cli
from tests.support.crm import settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

AUTH = {"Authorization": "Bearer test-token-1234567890"}
REFUSED_URLS = [
    "http://127.0.0.1:8025",
    "http://localhost:8025",  # a DNS name counts by what it resolves to
    "http://10.1.2.3/rest/1/abc/",
    "https://192.168.0.10",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.64.0.1",  # carrier-grade NAT
    "http://0.0.0.0:8000",
    "http://[::1]:8025",
    "http://[::ffff:127.0.0.1]:8025",
    "http://[fe80::1]",
    "http://224.0.0.1",
]


def private_refused(tmp_path: Path, database_url: str) -> Settings:
    return settings_for(tmp_path, database_url).model_copy(update={"allow_private_crm": False})


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_non_public_addresses_are_refused(url: str) -> None:
    with pytest.raises(service.CRMAddressRefused, match="FUNNELSYNC_ALLOW_PRIVATE_CRM=true"):
        asyncio.run(service.refuse_private_urls(Settings(), [url]))
    asyncio.run(service.refuse_private_urls(Settings(allow_private_crm=True), [url]))


def test_public_addresses_pass() -> None:
    # Address literals: resolved without a network.
    asyncio.run(
        service.refuse_private_urls(Settings(), ["https://93.184.216.34/", "https://[2606:4700::1]/"])
    )


def test_an_unresolvable_host_is_refused() -> None:
    with pytest.raises(service.CRMAddressRefused, match="cannot be resolved"):
        asyncio.run(service.refuse_private_urls(Settings(), ["https://no-such-host.invalid/"]))


def test_the_urls_checked_are_those_funnelsync_calls() -> None:
    data = AmoCRMConnectionCreate(
        name="amo",
        crm="amocrm",
        subdomain="acme",
        base_url="http://127.0.0.1:9",
        client_id="id",
        client_secret=SecretStr("s"),
        redirect_uri="http://localhost/callback",  # the CRM redirects a browser there: not called
        auth_code=SecretStr("code"),
    )
    assert service.input_urls(data) == ["http://127.0.0.1:9"]


@pytest.mark.parametrize(
    "body",
    [
        {"crm": "bitrix24", "webhook_url": "http://localhost:9/rest/1/abc123/", "app_token": "t"},
        # OAuth: refused before the authorization code is exchanged (that would be a 400).
        {
            "crm": "amocrm",
            "subdomain": "acme",
            "base_url": "http://127.0.0.1:9",
            "client_id": "id",
            "client_secret": "s",
            "redirect_uri": "https://example.com/cb",
            "auth_code": "code",
        },
    ],
)
def test_api_add_answers_422(database_url: str, tmp_path: Path, body: dict[str, str]) -> None:
    settings = private_refused(tmp_path, database_url)
    with serve_asgi(create_app(settings)) as url, web.client(base_url=url, headers=AUTH) as api:
        response = api.post("/api/connections", json={"name": "x", **body})
        assert response.status_code == 422, response.text
        assert "127.0.0.1" in response.json()["detail"]
        assert "FUNNELSYNC_ALLOW_PRIVATE_CRM=true" in response.json()["detail"]
        assert api.get("/api/connections").json() == []


def test_cli_add_exits_2(tmp_path: Path) -> None:
    result = run_cli(
        "connections", "add", "x", "--crm", "amocrm", "--subdomain", "acme", "--token", "t",
        "--base-url", "http://localhost:9", env={"FUNNELSYNC_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "is at 127.0.0.1" in result.stderr or "is at ::1" in result.stderr
    listed = run_cli("connections", "list", "--json", env={"FUNNELSYNC_DATA_DIR": str(tmp_path)})
    assert listed.stdout.strip() == "[]"


async def _store_and_open(database_url: str, allowed: Settings, refused: Settings) -> Connection:
    record = service.build_record(
        allowed,
        AmoCRMConnectionCreate(
            name="amo", crm="amocrm", subdomain="acme", base_url="http://127.0.0.1:9", token=SecretStr("t")
        ),
        None,
    )
    async with open_sessions(database_url) as sessions:
        async with sessions.begin() as session:
            await service.add_connection(session, record)
        connector = await open_connector(sessions, allowed, record)  # added while private was allowed
        await connector.aclose()
        with pytest.raises(AddressRefused, match=r"is at 127\.0\.0\.1"):
            await open_connector(sessions, refused, record)
        async with sessions() as session:
            return await service.get_connection(session, "amo")


def test_a_connector_for_a_private_address_is_refused_and_the_connection_paused(
    database_url: str, tmp_path: Path
) -> None:
    allowed = settings_for(tmp_path, database_url)
    stored = asyncio.run(_store_and_open(database_url, allowed, private_refused(tmp_path, database_url)))
    assert stored.status == ConnectionSwitch.PAUSED
    assert stored.paused_reason and "FUNNELSYNC_ALLOW_PRIVATE_CRM=true" in stored.paused_reason
    with serve_asgi(create_app(private_refused(tmp_path, database_url))) as url:
        check = web.post(f"{url}/api/connections/amo/check", headers=AUTH)
    assert check.status_code == 502 and "is at 127.0.0.1" in check.json()["detail"]


async def test_a_redirect_to_a_private_host_is_refused_before_anything_is_sent_there(tmp_path: Path) -> None:
    """A public CRM host that answers with a host-only redirect to a private address would get the
    next request, credentials included, there. The sandboxes all live on loopback, so this one
    redirect is a mocked response (a fault no sandbox can make)."""
    settings = Settings(data_dir=tmp_path, allow_private_crm=False)
    sent: list[str] = []

    def crm(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url.host))
        return httpx.Response(301, headers={"Location": "http://127.0.0.1/rest/1/code/profile"})

    async def guard(old: str, new: str) -> None:
        await refuse_private_move(settings, old, new)

    client = ThrottledClient(
        "http://crm.example", "ssrf:test", RatePolicy(per_second=100, burst=100),
        transport=httpx.MockTransport(crm), on_host_change=guard,
    )  # fmt: skip
    try:
        with pytest.raises(RedirectRefused) as refused:
            await client.request("GET", "/rest/1/code/profile")
    finally:
        await client.aclose()
    assert sent == ["crm.example"]  # nothing went to 127.0.0.1
    assert refused.value.crm_code == "PRIVATE_REDIRECT" and "127.0.0.1" in str(refused.value)
    # Allowed explicitly (a self-hosted CRM on a private network), the move is accepted.
    await refuse_private_move(
        Settings(data_dir=tmp_path, allow_private_crm=True), "http://crm.example", "http://127.0.0.1"
    )
