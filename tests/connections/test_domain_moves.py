"""A renamed Bitrix24 portal / amoCRM account (issue #11 item 5), end to end over real HTTP with the
sandboxes, FunnelSync served on a port, both databases.

The sandbox listens under two names: 127.0.0.1 (the old address) and localhost (the new one). After
a rename the old address redirects REST calls to the same path on the new host, and webhooks name
the new domain (Bitrix24 auth[domain], amoCRM account[subdomain]). Queued writes must reach the CRM,
the connection must record its new address (and keep the old one), and webhooks from the new
address with a valid token/secret must be accepted. A redirect elsewhere pauses the connection with
a clear reason and keeps the writes queued.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service
from app.connections.connector import open_connector
from app.connections.models import Connection
from app.funnels.plan import AMOCRM_EVENTS
from app.main import create_app
from app.outbox.delivery import DrainResult, RetrySettings, drain_connection
from app.outbox.enqueue import enqueue
from app.outbox.models import OutboxCommand
from app.webhooks.models import InboxEvent
from connectors.base import CRMConnector, Pipeline
from tests.support import web
from tests.support.crm import APP_TOKEN, CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.matrix import each_crm_on_one_database
from tests.support.notify import RequestCounter
from tests.support.server import bound_socket, serve_asgi

API_AUTH = {"Authorization": "Bearer test-token-1234567890"}
NO_DELAY = RetrySettings(base_delay=timedelta(0), max_delay=timedelta(0))


@dataclass
class Moving:
    sandbox: CRMSandbox
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    hooks: RequestCounter
    url: str  # FunnelSync
    pipeline: Pipeline
    old_domain: str  # what the CRM called itself before the rename: portal host, amoCRM subdomain
    opened: list[CRMConnector]

    @property
    def crm(self) -> str:
        return self.sandbox.crm

    @property
    def old_host(self) -> str:
        return self.sandbox.url.split("://", 1)[1]

    @property
    def new_host(self) -> str:
        return f"localhost:{self.old_host.rsplit(':', 1)[1]}"

    @property
    def new_domain(self) -> str:
        """What the CRM calls itself after the rename: portal host, amoCRM subdomain."""
        return self.new_host if self.crm == "bitrix24" else "renamed"

    def rename(self, **extra: Any) -> None:
        body: dict[str, Any] = {"new_host": self.new_host, **extra}
        if self.crm == "amocrm":
            body["subdomain"] = "renamed"
        self.sandbox.box.control("POST", "/_sandbox/rename", body)

    def redirects(self) -> int:
        return int(self.sandbox.box.control("GET", "/_sandbox/rename")["redirects"])

    def seed_deal(self) -> str:
        """A deal in the main pipeline's first stage, created without webhooks (an import)."""
        box = self.sandbox.box
        if self.crm == "bitrix24":
            body = box.control(
                "POST", "/_sandbox/deals/bulk", {"count": 1, "category_id": int(self.pipeline.id)}
            )
            return str(body["first_id"])
        return str(box.create_leads(1, pipeline_id=int(self.pipeline.id))[0])

    def stage_of(self, deal_id: str) -> str:
        box = self.sandbox.box
        if self.crm == "bitrix24":
            return next(str(d["STAGE_ID"]) for d in box.state()["deals"] if str(d["ID"]) == deal_id)
        # Read at the new name, which never redirects (the old one may, to a page that is not JSON).
        token = {"Authorization": f"Bearer {box.config.token}"}
        lead = web.get(f"http://{self.new_host}/api/v4/leads/{deal_id}", headers=token, timeout=30).json()
        return str(lead["status_id"])

    @property
    def target_stage(self) -> str:
        return [s.id for s in self.pipeline.stages if s.semantics == "process" and s.editable][1]

    async def record(self) -> Connection:
        async with self.sessions() as session:
            return await service.get_connection(session, self.crm)

    async def connector(self) -> CRMConnector:
        connector = await open_connector(self.sessions, self.settings, await self.record())
        self.opened.append(connector)
        return connector

    async def enqueue_move(self, deal_id: str) -> int:
        record = await self.record()
        payload = {"crm_deal_id": deal_id, "pipeline_id": self.pipeline.id, "stage_id": self.target_stage}
        async with self.sessions.begin() as session:
            assert await enqueue(
                session,
                connection_id=record.id,
                kind="move",
                payload=payload,
                idempotency_key=f"mv:{deal_id}",
            )
        async with self.sessions() as session:
            command_id = await session.scalar(
                select(OutboxCommand.id).where(OutboxCommand.idempotency_key == f"mv:{deal_id}")
            )
        assert command_id is not None
        return command_id

    async def drain(self) -> DrainResult:
        return await drain_connection(
            self.sessions, await self.record(), await self.connector(), retry=NO_DELAY
        )

    async def command(self, command_id: int) -> OutboxCommand:
        async with self.sessions() as session:
            command = await session.get(OutboxCommand, command_id)
        assert command is not None
        return command

    def status(self) -> dict[str, Any]:
        response = web.get(f"{self.url}/api/connections/{self.crm}/status", headers=API_AUTH, timeout=30)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
async def moving(crm: str, database_url: str, tmp_path: Path) -> AsyncIterator[Moving]:
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = settings_for(tmp_path, database_url).model_copy(update={"public_url": url})
    hooks = RequestCounter(create_app(settings))
    options = {"webhook_url": f"{url}/webhooks/bitrix24/{crm}"} if crm == "bitrix24" else {}
    with serve_asgi(hooks, sock=sock), crm_sandbox(crm, **options) as sandbox:
        async with open_sessions(database_url) as sessions:
            record = sandbox.connection(settings, name=crm)
            async with sessions.begin() as session:
                session.add(record)
            probe = sandbox.connector()
            try:
                pipeline = next(p for p in await probe.list_pipelines() if p.is_main)
                if crm == "amocrm":  # amoCRM webhooks are subscribed through the API
                    await probe.register_webhook(
                        service.webhook_url(settings, record, reveal_secret=True), AMOCRM_EVENTS
                    )
            finally:
                await probe.aclose()
            old_domain = str(record.settings["domain" if crm == "bitrix24" else "subdomain"])
            harness = Moving(sandbox, settings, sessions, hooks, url, pipeline, old_domain, [])
            try:
                yield harness
            finally:
                for connector in harness.opened:
                    await connector.aclose()


@each_crm_on_one_database()
async def test_queued_writes_reach_a_renamed_crm_which_is_recorded(moving: Moving) -> None:
    deal_id = moving.seed_deal()
    command_id = await moving.enqueue_move(deal_id)
    moving.rename()

    result = await moving.drain()

    assert result.delivered == 1 and not result.paused, result.errors
    assert (await moving.command(command_id)).status == "done"
    assert moving.stage_of(deal_id) == moving.target_stage
    # The CRM reports the move with a webhook from its new address; let it arrive before looking.
    assert moving.hooks.wait_for(1) >= 1 and set(moving.hooks.statuses) == {200}
    record = await moving.record()
    assert record.status == "active"
    assert record.base_url.startswith(f"http://{moving.new_host}")
    credentials = service.credentials(moving.settings, record)
    if moving.crm == "bitrix24":  # the inbound webhook URL moved with the portal, code and all
        assert credentials["webhook_url"] == f"http://{moving.new_host}/rest/1/sandboxwebhookcode1/"
    status = moving.status()
    assert status["domain"] == moving.new_domain
    previous = status["previous_domains"]
    # The redirect moved the host first; a Bitrix24 portal is known by its host, so its webhook
    # then names a domain already recorded. An amoCRM account is known by its subdomain, which only
    # the webhook tells (a move to a host outside amoCRM's domains, like the sandbox's, does not).
    assert (
        previous[0]["domain"] == moving.old_host and previous[0]["source"] == "api" and previous[0]["until"]
    )
    if moving.crm == "amocrm":
        assert previous[1]["domain"] == moving.old_domain and previous[1]["source"] == "webhook"
    assert len(previous) == (1 if moving.crm == "bitrix24" else 2)
    # A connector made from what is stored now (another process) goes to the new host directly.
    assert await (await moving.connector()).list_pipelines()
    assert moving.redirects() == 1
    # The overview shows the move.
    async with web.async_client(base_url=moving.url, timeout=30) as client:
        assert (
            await client.post("/login", data={"token": "test-token-1234567890", "next": "/"})
        ).status_code == 303
        page = (await client.get("/")).text
    assert f"{previous[-1]['domain']} → {moving.new_domain}" in page  # the latest move


@each_crm_on_one_database(crossed=True)
async def test_a_redirect_elsewhere_pauses_the_connection_and_keeps_the_writes(moving: Moving) -> None:
    deal_id = moving.seed_deal()
    command_id = await moving.enqueue_move(deal_id)
    before = await moving.record()
    moving.rename(path="/auth/")  # e.g. a login page: not a renamed portal

    result = await moving.drain()

    assert result.paused and result.delivered == 0
    command = await moving.command(command_id)
    assert command.status == "pending"  # waits for a person, instead of dying
    record = await moving.record()
    assert record.status == "paused" and record.paused_reason
    assert "different path" in record.paused_reason and "not followed" in record.paused_reason
    assert "sandboxwebhookcode1" not in record.paused_reason  # a webhook URL's path is a secret
    assert record.base_url == before.base_url and record.settings == before.settings
    assert moving.stage_of(deal_id) != moving.target_stage


@each_crm_on_one_database()
async def test_webhooks_from_the_renamed_crm_are_accepted_and_the_domain_recorded(moving: Moving) -> None:
    moving.rename()
    box = moving.sandbox.box
    if moving.crm == "bitrix24":
        box.create_deal(TITLE="After the rename", CATEGORY_ID=int(moving.pipeline.id))
    else:
        box.create_lead(name="After the rename", pipeline_id=int(moving.pipeline.id))

    assert moving.hooks.wait_for(1) >= 1
    assert moving.hooks.statuses and set(moving.hooks.statuses) == {200}
    async with moving.sessions() as session:
        stored = list(await session.scalars(select(InboxEvent)))
    assert stored and all(e.status != "failed" for e in stored)
    status = moving.status()
    assert status["domain"] == moving.new_domain
    [previous] = status["previous_domains"]
    assert previous["source"] == "webhook" and previous["domain"] == moving.old_domain


@each_crm_on_one_database(crossed=True)
async def test_a_late_event_naming_the_old_address_does_not_move_the_connection_back(moving: Moving) -> None:
    moving.rename()
    box = moving.sandbox.box
    if moving.crm == "bitrix24":
        box.create_deal(TITLE="After the rename", CATEGORY_ID=int(moving.pipeline.id))
    else:
        box.create_lead(name="After the rename", pipeline_id=int(moving.pipeline.id))
    assert moving.hooks.wait_for(1) >= 1
    assert moving.status()["domain"] == moving.new_domain

    # An event the CRM queued before the rename, delivered after it, with valid credentials.
    record = await moving.record()
    if moving.crm == "bitrix24":
        path = f"/webhooks/bitrix24/{moving.crm}"
        body = urlencode(
            {
                "event": "ONCRMDEALUPDATE",
                "data[FIELDS][ID]": "1",
                "ts": "1700000000",
                "auth[domain]": moving.old_domain,
                "auth[member_id]": box.config.member_id,
                "auth[application_token]": APP_TOKEN,
            }
        )
    else:
        path = service.webhook_url(moving.settings, record, reveal_secret=True).removeprefix(moving.url)
        body = urlencode(
            {
                "leads[update][0][id]": "1",
                "leads[update][0][status_id]": moving.target_stage,
                "leads[update][0][pipeline_id]": moving.pipeline.id,
                "leads[update][0][last_modified]": "1700000000",
                "account[subdomain]": moving.old_domain,
                "account[id]": str(box.config.account_id),
            }
        )
    async with web.async_client(base_url=moving.url, timeout=30) as client:
        answer = await client.post(
            path, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )

    assert answer.status_code == 200 and answer.json()["status"] == "accepted"
    status = moving.status()
    assert status["domain"] == moving.new_domain
    assert [p["domain"] for p in status["previous_domains"]] == [moving.old_domain]
