"""A CRM is one descriptor, registered once (issue #12): registering a toy CRM is all it takes for
the service to build its connector, read its webhooks, subscribe it to its own events and name its
webhook URL, take its connection input through the API and accept its webhooks through the one
receiver, with no edits elsewhere. The toy CRM's API is the amoCRM sandbox over real HTTP, under the
toy's name; its webhook format, event names and connection input are its own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service
from app.connections.connector import (
    ROTATED_AT,
    domain_of,
    open_connector,
    refresh_token_lapses_at,
)
from app.connections.models import Connection
from app.db import utcnow
from app.funnels.models import Funnel
from app.funnels.service import plan_context
from app.funnels.webhook_upkeep import check_webhooks
from app.main import create_app
from app.webhooks.models import InboxEvent
from app.webhooks.service import dedupe_key
from connectors import factory
from connectors.amocrm.client import AmoCRMConnector
from connectors.base import CRMConnector, DealEvent, DealEventKind, TokenSaver, WebhookParseError
from connectors.descriptor import (
    ConnectionInput,
    CRMDescriptor,
    NewConnection,
    UnknownCRM,
    UrlSecret,
    WebhookIdentity,
    crm_names,
    descriptor_for,
    descriptors,
    register,
    unregister,
)
from connectors.events import parse_deal_events, read_identity
from connectors.http import AMOCRM_DEFAULT, DomainSaver, RatePolicy, RetryPolicy
from tests.connectors.amocrm import conftest as amo
from tests.support import web
from tests.support.crm import FAST_RETRY, settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

# The toy's API is the amoCRM sandbox, which accepts only amoCRM's event names: a subset, in an order
# of its own, tells the toy's list from amoCRM's.
TOY_EVENTS = ("status_lead", "add_lead")
_TOY_KINDS: dict[str, DealEventKind] = {"add_lead": "add", "status_lead": "status"}


def _toy_rate(settings: Mapping[str, Any]) -> RatePolicy:
    return AMOCRM_DEFAULT.scaled(float(settings.get("speed") or 1))


def _toy_connector(
    base_url: str,
    credentials: dict[str, Any],
    settings: Mapping[str, Any],
    *,
    account_key: str,
    token_saver: TokenSaver | None,
    domain_saver: DomainSaver | None,
    retry: RetryPolicy | None = None,
) -> CRMConnector:
    built.append(account_key)
    return AmoCRMConnector(
        str(settings["account"]),
        token=credentials["token"],
        base_url=base_url,
        rate=_toy_rate(settings),
        retry=FAST_RETRY,
        account_key=account_key,
        domain_saver=domain_saver,
    )


def _toy_body(body: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(body)
    except ValueError as exc:
        raise WebhookParseError(f"not a toy event: {exc}") from None
    if not isinstance(decoded, dict):
        raise WebhookParseError("not a toy event: not an object")
    return decoded


def _toy_identity(body: bytes, content_type: str) -> WebhookIdentity:
    data = _toy_body(body)
    return WebhookIdentity(domain=data.get("account"), account_id=data.get("account_id"))


def _toy_events(body: bytes, content_type: str) -> list[DealEvent]:
    return [
        DealEvent(
            kind=_TOY_KINDS[item["event"]],
            deal_id=str(item["id"]),
            dedupe_key=f"toy:{item['event']}:{item['id']}:{item['at']}",
            occurred_at=datetime.fromtimestamp(item["at"], UTC),
        )
        for item in _toy_body(body)["deals"]
    ]


class ToyConnectionCreate(ConnectionInput):
    crm: Literal["toy"]
    account: str
    token: SecretStr
    base_url: str

    def new_connection(self, oauth_tokens: dict[str, Any] | None) -> NewConnection:
        credentials = {"auth": "token", "token": self.token.get_secret_value(), "webhook_secret": "s3cret"}
        return NewConnection(self.base_url, {"account": self.account}, credentials)


TOY = CRMDescriptor(
    name="toy",
    display_name="Toy CRM",
    build_connector=_toy_connector,
    connection_input=ToyConnectionCreate,
    rate_for=_toy_rate,
    read_identity=_toy_identity,
    parse_deal_events=_toy_events,
    webhook_events=TOY_EVENTS,
    manual_webhook_events=TOY_EVENTS[1:],
    webhook_auth=UrlSecret(credential="webhook_secret"),
    domain_setting="account",
    domain_from_host=lambda host: host.split(".", 1)[0],
    refresh_token_lifetime=timedelta(days=7),
    credentials_advice="mint a new toy token",
)
built: list[str] = []  # account keys the toy builder was called with


@pytest.fixture
def toy_crm() -> Iterator[CRMDescriptor]:
    register(TOY)
    built.clear()
    try:
        yield TOY
    finally:
        unregister(TOY.name)


@dataclass
class ToyAccount:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    box: amo.Sandbox

    async def record(self) -> Connection:
        async with self.sessions() as session:
            return await service.get_connection(session, "toy-shop")


@pytest.fixture
async def toy_account(toy_crm: CRMDescriptor, database_url: str, tmp_path: Path) -> AsyncIterator[ToyAccount]:
    """A stored connection with crm="toy", its API served by an amoCRM sandbox."""
    settings = settings_for(tmp_path, database_url)
    with amo.running_sandbox() as box:
        async with open_sessions(database_url) as sessions:
            async with sessions.begin() as session:
                record = Connection(
                    name="toy-shop",
                    crm="toy",
                    base_url=box.url,
                    settings={"account": box.config.subdomain, "speed": box.config.speed},
                )
                service.store_credentials(
                    settings, record, {"auth": "token", "token": box.config.token, "webhook_secret": "s3cret"}
                )
                session.add(record)
                await session.flush()
                session.add(
                    Funnel(
                        connection_id=record.id,
                        template_key="general.typical",
                        name="Sales",
                        crm_pipeline_id="1",
                        provisioned_at=utcnow(),
                    )
                )
            yield ToyAccount(settings, sessions, box)


def test_the_builtin_crms_are_registered_once_each() -> None:
    assert crm_names() == ("bitrix24", "amocrm")
    assert [d.display_name for d in descriptors()] == ["Bitrix24", "amoCRM"]
    with pytest.raises(ValueError, match="'amocrm' is already registered"):
        register(descriptor_for("amocrm"))


def test_an_unknown_crm_is_a_clear_error_naming_the_known_ones() -> None:
    with pytest.raises(UnknownCRM, match=r"unknown CRM 'nope'; known CRMs: bitrix24, amocrm"):
        descriptor_for("nope")
    with pytest.raises(ValueError, match="unknown CRM 'nope'"):
        factory.build_connector("nope", "https://x.example", {}, {})
    # Webhook parsing keeps its one-exception contract.
    with pytest.raises(WebhookParseError, match="unknown CRM 'nope'"):
        parse_deal_events("nope", b"{}", "application/json")


async def test_a_registered_toy_crm_is_picked_up_without_edits_elsewhere(toy_account: ToyAccount) -> None:
    assert descriptor_for("toy") is TOY
    assert "toy" in crm_names()
    record = await toy_account.record()

    # The connection factory builds the toy's connector, which talks to its API over HTTP.
    connector = await open_connector(toy_account.sessions, toy_account.settings, record)
    try:
        assert built == [f"toy:{toy_account.box.url.split('://', 1)[1]}"]
        assert (await connector.check()).account_id == str(toy_account.box.config.account_id)

        # Its webhook URL follows its descriptor: the toy CRM does not sign, so a secret is in it.
        assert service.webhook_url(toy_account.settings, record, reveal_secret=True) == (
            "http://127.0.0.1:9/webhooks/toy/toy-shop/s3cret"
        )
        assert service.to_out(toy_account.settings, record).webhook_url.endswith("/toy-shop/***")

        # Provisioning subscribes it to its own events (all of them: this connector has the API).
        ctx = plan_context(toy_account.settings, record, connector)
        assert ctx.crm == "toy" and ctx.webhook_events == TOY_EVENTS

        # The upkeep job registers our webhook in the toy CRM with the toy's events.
        assert (
            await check_webhooks(toy_account.sessions, toy_account.settings, lambda r: _same(connector)) == 1
        )
        hooks = await connector.list_webhooks()
        assert [(h.url, h.events) for h in hooks] == [(ctx.webhook_url, TOY_EVENTS)]
    finally:
        await connector.aclose()
    assert TOY.events_to_subscribe(through_api=False) == ("add_lead",)

    # Its webhook bodies are read by its own parser, for the receiver and for the inbox.
    body = json.dumps(
        {
            "account": "shop",
            "account_id": "42",
            "deals": [{"id": 7, "event": "status_lead", "at": 1_700_000_000}],
        }
    ).encode()
    assert read_identity("toy", body, "application/json") == WebhookIdentity("shop", "42", None)
    [event] = parse_deal_events("toy", body, "application/json")
    assert (event.kind, event.deal_id, event.dedupe_key) == ("status", "7", "toy:status_lead:7:1700000000")
    with pytest.raises(WebhookParseError, match="not a toy event"):
        read_identity("toy", b"leads[add][0][id]=1", "application/x-www-form-urlencoded")

    # Account names, refresh-token lifetimes: the toy's settings key and its lifetime.
    assert domain_of(record) == toy_account.box.config.subdomain
    rotated = datetime(2026, 1, 1, tzinfo=UTC)
    record.settings = {**record.settings, ROTATED_AT: rotated.isoformat(), "token_expires_at": "x"}
    assert refresh_token_lapses_at(record) == rotated + timedelta(days=7)


async def _same(connector: CRMConnector) -> CRMConnector:
    return connector


def test_an_unregistered_crm_is_unknown_again(toy_crm: CRMDescriptor) -> None:
    unregister("toy")
    with pytest.raises(UnknownCRM, match=r"known CRMs: bitrix24, amocrm$"):
        descriptor_for("toy")


def _toy_delivery(account: str, deal_id: int) -> bytes:
    deals = [{"id": deal_id, "event": "add_lead", "at": 1_700_000_000}]
    return json.dumps({"account": account, "account_id": "42", "deals": deals}).encode()


async def test_a_toy_crms_webhook_is_stored_by_the_generic_receiver(toy_account: ToyAccount) -> None:
    record = await toy_account.record()
    account = toy_account.box.config.subdomain
    with serve_asgi(create_app(toy_account.settings)) as url:
        async with web.async_client(base_url=url, timeout=30) as client:
            # The toy's descriptor puts a secret in its URL: its URL is /webhooks/toy/<name>/<secret>.
            accepted = await client.post("/webhooks/toy/toy-shop/s3cret", content=_toy_delivery(account, 7))
            again = await client.post("/webhooks/toy/toy-shop/s3cret", content=_toy_delivery(account, 7))
            forged = await client.post("/webhooks/toy/toy-shop/guess", content=_toy_delivery(account, 8))
            without_secret = await client.post("/webhooks/toy/toy-shop", content=_toy_delivery(account, 9))
    assert (accepted.status_code, accepted.json()) == (200, {"status": "accepted"})
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert (forged.status_code, forged.json()) == (
        401,
        {"detail": "webhook refused: wrong secret in the URL"},
    )
    assert without_secret.status_code == 404
    async with toy_account.sessions() as session:
        stored = list(await session.scalars(select(InboxEvent)))
    # Stored once, keyed by the toy's own event key (its parser ran in the receiver), for processing.
    expected_key = dedupe_key(["toy:add_lead:7:1700000000"], b"")
    assert [(e.connection_id, e.dedupe_key, e.error, e.body) for e in stored] == [
        (record.id, expected_key, None, _toy_delivery(account, 7))
    ]


async def test_a_toy_connection_is_added_through_the_api(toy_account: ToyAccount) -> None:
    body = {"name": "toy-two", "crm": "toy", "account": "two", "token": "t", "base_url": "https://two.toy"}
    auth = {"Authorization": "Bearer test-token-1234567890"}
    with serve_asgi(create_app(toy_account.settings)) as url:
        async with web.async_client(base_url=url, timeout=30, headers=auth) as client:
            added = await client.post("/api/connections", json=body)
            bad = await client.post("/api/connections", json={**body, "name": "toy-three", "account": 5})
    assert added.status_code == 201, added.text
    assert added.json()["webhook_url"] == "http://127.0.0.1:9/webhooks/toy/toy-two/***"
    assert added.json()["settings"] == {"account": "two"}
    # The toy's own model validated the input: a 422 naming its field.
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "toy", "account"]
