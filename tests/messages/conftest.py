"""The message outbox on a real database with the channel sandboxes on real ports: a connection, a
deal with its contacts cached, channel accounts pointed at the sandboxes, and delivery runs at a
fixed clock (no sleeps: a deferred message is delivered by a run at a later `now`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service as connections
from app.connections.models import Connection
from app.deals.models import Deal
from app.messages import accounts
from app.messages.contacts import to_json
from app.messages.delivery import deliver_messages
from app.messages.enqueue import enqueue_notify, enqueue_webhook
from app.messages.models import DealContacts, Message
from app.messages.optout import record_opt_out
from app.messages.outcomes import DeliveryResult
from app.messages.policy import set_policy
from app.messages.statuses import OptOutSource
from app.outbox.delivery import RetrySettings
from connectors.base import ContactInfo, CRMConnector
from tests.support.channels import (
    SmtpSandbox,
    TelegramSandbox,
    running_smtp_sandbox,
    running_telegram_sandbox,
)
from tests.support.channels_http import (
    RunningReceiver,
    RunningSmsSandbox,
    running_sms_sandbox,
    running_webhook_receiver,
)
from tests.support.crm import settings_for
from tests.support.db import open_sessions

# 12:00 in Moscow on a weekday: outside the default quiet hours (21:00-09:00).
NOON = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
NO_DELAY = RetrySettings(max_attempts=3, base_delay=timedelta(0), max_delay=timedelta(0))
CLIENT = ContactInfo(
    "501",
    "Иван",
    phones=("+7 (925) 507-06-02",),
    emails=("ivan@example.ru",),
    telegram="700100",
    is_primary=True,
)
MESSAGE = {
    "ru": "Здравствуйте, {contact.name}! Сделка «{deal.title}».",
    "en": "Hello, {contact.name}! Deal {deal.title}.",
}
SUBJECT = {"ru": "Ваша заявка", "en": "Your request"}


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpSandbox]:
    with running_smtp_sandbox() as box:
        yield box


@pytest.fixture(scope="module")
def telegram() -> Iterator[TelegramSandbox]:
    with running_telegram_sandbox() as box:
        yield box


@pytest.fixture(scope="module")
def sms() -> Iterator[RunningSmsSandbox]:
    with running_sms_sandbox() as box:
        yield box


@pytest.fixture(scope="module")
def receiver() -> Iterator[RunningReceiver]:
    with running_webhook_receiver() as box:
        yield box


@dataclass
class Outbox:
    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    connection: Connection
    deal_id: int
    _keys: int = 0

    async def set_account(self, channel: str, config: dict[str, Any], secrets: dict[str, Any]) -> None:
        async with self.sessions.begin() as session:
            await accounts.set_account(session, self.settings, self.connection, channel, config, secrets)

    async def policy(self, **changes: Any) -> None:
        async with self.sessions.begin() as session:
            record = await session.get(Connection, self.connection.id)
            assert record is not None
            set_policy(record, changes)
            self.connection = record

    async def contacts(self, *people: ContactInfo) -> None:
        async with self.sessions.begin() as session:
            row = await session.get(DealContacts, self.deal_id)
            if row is None:
                row = DealContacts(deal_id=self.deal_id)
                session.add(row)
            row.contacts, row.fetched_at = [to_json(c) for c in people], NOON

    async def record_opt_out(self, channel: str, address: str) -> None:
        async with self.sessions.begin() as session:
            await record_opt_out(session, self.connection.id, channel, address, OptOutSource.OPERATOR)

    def key(self) -> str:
        self._keys += 1
        return f"auto:{self.deal_id}:test:#{self._keys}:0"

    async def notify(self, channels: list[str], *, now: datetime = NOON, key: str | None = None) -> str:
        key = key or self.key()
        async with self.sessions.begin() as session:
            await enqueue_notify(
                session,
                connection_id=self.connection.id,
                deal_id=self.deal_id,
                automation="test",
                key=key,
                channels=channels,
                message=MESSAGE,
                subject=SUBJECT if "email" in channels else None,
                now=now,
            )
        return key

    async def webhook(self, event: str = "visit.reminder", *, now: datetime = NOON) -> str:
        key = self.key()
        async with self.sessions.begin() as session:
            await enqueue_webhook(
                session,
                connection_id=self.connection.id,
                deal_id=self.deal_id,
                automation="test",
                key=key,
                event=event,
                data={"deal": "Ремонт"},
                now=now,
            )
        return key

    async def deliver(self, now: datetime = NOON, connector: CRMConnector | None = None) -> DeliveryResult:
        async def get_connector(_record: Connection) -> CRMConnector:
            assert connector is not None
            return connector

        getter = get_connector if connector is not None else None
        return await deliver_messages(self.sessions, self.settings, getter, now, retry=NO_DELAY)

    async def message(self, key: str) -> Message:
        async with self.sessions() as session:
            found = await session.scalar(select(Message).where(Message.idempotency_key == key))
        assert found is not None
        return found


@pytest.fixture
async def outbox(database_url: str, tmp_path: Path) -> AsyncIterator[Outbox]:
    settings = settings_for(tmp_path, database_url)
    async with open_sessions(database_url) as sessions:
        async with sessions.begin() as session:
            record = Connection(name="b24", crm="bitrix24", base_url="http://127.0.0.1:9/", settings={})
            connections.store_credentials(settings, record, {"auth": "webhook"})
            session.add(record)
            await session.flush()
            deal = Deal(
                connection_id=record.id,
                crm_deal_id="42",
                crm_pipeline_id="0",
                crm_stage_id="NEW",
                title="Ремонт",
                crm_updated_at=NOON,
            )
            session.add(deal)
            await session.flush()
        box = Outbox(sessions, settings, record, deal.id)
        await box.policy(quiet_hours="", daily_limit=3)
        await box.contacts(CLIENT)
        yield box
