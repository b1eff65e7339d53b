"""The bot bench: a CRM sandbox with the BANT qualification funnel provisioned, a Telegram Bot API
sandbox, a connection with a telegram account pointing at it, and helpers to drain the outbox and
read the deal the CRM then holds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bot.models import BotConversation
from app.bot.service import BotTarget, load_target, open_bot
from app.config import Settings
from app.connections.models import Connection
from app.funnels.models import FunnelMapping
from app.messages.accounts import set_account
from app.messages.models import ChannelAccount
from app.outbox.delivery import drain_connection
from app.outbox.models import OutboxCommand
from connectors.amocrm.sandbox.state import MANAGER_ID
from connectors.channels.telegram_bot import TelegramBot
from funnel_templates.loader import library
from tests.funnels.conftest import Provisioner
from tests.support.channels import TelegramSandbox, running_telegram_sandbox
from tests.support.crm import CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions

TEMPLATE = "by_goal.qualification"
# Not the CRM's default responsible (the webhook's or token's user), so the deal shows it was chosen.
SUPERVISOR = {"bitrix24": "7", "amocrm": str(MANAGER_ID)}
CHAT = 424242


@dataclass
class BotBench:
    crm: CRMSandbox
    telegram: TelegramSandbox
    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    record: Connection

    @property
    def supervisor(self) -> str:
        return SUPERVISOR[self.crm.crm]

    async def target(self) -> BotTarget:
        async with self.sessions() as session:
            return await load_target(session, self.record.name, TEMPLATE)

    async def bot(self) -> TelegramBot:
        async with self.sessions() as session:
            account = await session.scalar(select(ChannelAccount))
            assert account is not None
            return await open_bot(self.settings, account)

    async def drain(self) -> None:
        connector = self.crm.connector()
        try:
            result = await drain_connection(self.sessions, self.record, connector)
        finally:
            await connector.aclose()
        assert result.dead == 0, result.errors

    async def conversation(self, chat_id: int = CHAT) -> BotConversation:
        async with self.sessions() as session:
            found = await session.scalar(
                select(BotConversation).where(BotConversation.chat_id == str(chat_id))
            )
            assert found is not None
            return found

    async def deal_commands(self) -> list[OutboxCommand]:
        async with self.sessions() as session:
            query = select(OutboxCommand).where(OutboxCommand.kind == "deal").order_by(OutboxCommand.id)
            return list(await session.scalars(query))

    async def stage_id(self, code: str) -> str:
        return str((await self.target()).stage_ids[code])

    def replies(self, chat_id: int = CHAT) -> list[str]:
        return [m["text"] for m in self.telegram.messages(chat_id)]

    def buttons(self, chat_id: int = CHAT) -> list[str]:
        """The callback data of the buttons on the bot's latest message to the chat."""
        last = self.telegram.messages(chat_id)[-1]
        rows = last.get("reply_markup", {}).get("inline_keyboard", [])
        return [b["callback_data"] for row in rows for b in row]

    async def crm_deal(self, crm_deal_id: str) -> dict[str, Any]:
        """The deal as the CRM holds it: stage id, title, responsible, custom fields by our code."""
        async with self.sessions() as session:
            rows = list(await session.scalars(select(FunnelMapping).where(FunnelMapping.kind == "field")))
        if self.crm.crm == "bitrix24":
            names = {r.crm_name: r.code for r in rows}
            state = self.crm.box.state()
            deal = next(d for d in state["deals"] if str(d["ID"]) == crm_deal_id)
            # An enumeration holds a list item's ID: shown here as the item's text, as the portal shows it.
            items = {
                uf["FIELD_NAME"]: {str(i["ID"]): i["VALUE"] for i in uf.get("LIST") or []}
                for uf in state["userfields"]
            }
            return {
                "stage": str(deal["STAGE_ID"]),
                "title": deal["TITLE"],
                "responsible": str(deal["ASSIGNED_BY_ID"]),
                "fields": {
                    names[k]: items[k].get(str(v), v) if items.get(k) else v
                    for k, v in deal.items()
                    if k in names and v not in (None, "")
                },
            }
        ids = {r.crm_id: r.code for r in rows}
        lead = self.crm.box.lead(crm_deal_id)
        return {
            "stage": str(lead["status_id"]),
            "title": lead["name"],
            "responsible": str(lead["responsible_user_id"]),
            "fields": {
                ids[str(f["field_id"])]: f["values"][0]["value"]
                for f in lead.get("custom_fields_values") or []
                if str(f["field_id"]) in ids
            },
        }


@pytest.fixture
def telegram() -> Iterator[TelegramSandbox]:
    with running_telegram_sandbox() as sandbox:
        yield sandbox


@asynccontextmanager
async def start_bench(
    crm: str, database_url: str, tmp_path: Path, telegram: TelegramSandbox, *, public_url: str | None = None
) -> AsyncIterator[BotBench]:
    settings = settings_for(tmp_path, database_url)
    if public_url:
        settings = settings.model_copy(update={"public_url": public_url})
    with crm_sandbox(crm) as sandbox:
        async with open_sessions(database_url) as sessions:
            record = sandbox.connection(settings, name="acme")
            record.settings = {**(record.settings or {}), "supervisor_id": SUPERVISOR[crm]}
            async with sessions.begin() as session:
                session.add(record)
            assert (await Provisioner(sandbox, sessions, settings, record).run(library()[TEMPLATE])).applied
            async with sessions.begin() as session:
                await set_account(
                    session,
                    settings,
                    record,
                    "telegram",
                    {"api_base_url": telegram.url},
                    {"bot_token": telegram.token},
                )
            yield BotBench(sandbox, telegram, sessions, settings, record)


def cli_env(bench: BotBench) -> dict[str, str]:
    """The environment a `funnelsync` command needs to see the bench's database and secrets."""
    secret = bench.settings.secret_key
    return {
        "FUNNELSYNC_DATABASE_URL": str(bench.settings.database_url),
        "FUNNELSYNC_DATA_DIR": str(bench.settings.data_dir),
        "FUNNELSYNC_ALLOW_PRIVATE_CRM": "true",  # the sandboxes run on 127.0.0.1
        "FUNNELSYNC_SECRET_KEY": secret.get_secret_value() if secret else "",
        "FUNNELSYNC_PUBLIC_URL": bench.settings.public_url,
    }


@pytest.fixture
async def bench(
    crm: str, database_url: str, tmp_path: Path, telegram: TelegramSandbox
) -> AsyncIterator[BotBench]:
    """`crm` comes from each_crm_on_one_database() on the test."""
    async with start_bench(crm, database_url, tmp_path, telegram) as bench:
        yield bench
