"""The demo's messages: channel sandboxes the automations reach clients through, and three clients
whose deals trigger a visit reminder, a satisfaction survey and a win-back offer.

Beside the funnels the sales team simulation works, the demo provisions two funnels whose templates
carry automations (MESSAGE_FUNNELS), points each demo connection's email, Telegram and SMS accounts at
local sandboxes (an SMTP server, a Bot API emulator, an SMS.ru emulator) and lifts the quiet hours,
so that a demo started at night still shows its messages. The messages then flow the way they do in
production: a stage entry (or the automations sweep, for a date in a deal field) queues them, the
messages job reads the client's contacts from the CRM sandbox and sends them, and the dashboard's
Messages page and each deal page show them with their delivery status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service as connections
from app.funnels.models import Funnel, FunnelMapping, FunnelStage
from app.messages.accounts import set_account
from app.messages.models import Message
from app.messages.policy import set_policy
from app.messages.statuses import MessageStatus
from connectors.channels.sandbox.email import EmailSandboxConfig, create_email_sandbox_app
from connectors.channels.sandbox.sms import SmsSandboxConfig, create_sms_sandbox_app
from connectors.channels.sandbox.telegram import TelegramSandboxConfig, create_telegram_sandbox_app
from connectors.sandbox_support.kit import SandboxAccount, SandboxKit

# (connection, template with automations) provisioned beside the simulated funnels.
MESSAGE_FUNNELS = (("demo-amocrm", "auto_service.regular_clients"), ("demo-bitrix24", "base.win_back"))
COMPANY = "Демо-автосервис"  # Demo car service: {company.name} in the messages
SENDER = f"{COMPANY} <noreply@demo.funnelsync.test>"
CHANNELS = ("email", "telegram", "sms")


def channel_sandbox_apps() -> dict[str, FastAPI]:
    """channel -> its sandbox app; the SMTP listener starts with the email app's lifespan."""
    return {
        "email": create_email_sandbox_app(EmailSandboxConfig()),
        "telegram": create_telegram_sandbox_app(TelegramSandboxConfig()),
        "sms": create_sms_sandbox_app(SmsSandboxConfig()),
    }


def channel_accounts(
    apps: Mapping[str, FastAPI], urls: Mapping[str, str]
) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """channel -> (config, secrets) of the account that reaches its running sandbox."""
    smtp_port = apps["email"].state.mailbox.smtp_port
    return {
        "email": ({"host": "127.0.0.1", "port": smtp_port, "sender": SENDER, "security": "none"}, {}),
        "telegram": ({"api_base_url": urls["telegram"]}, {"bot_token": TelegramSandboxConfig().token}),
        "sms": ({"api_base_url": urls["sms"]}, {"api_id": SmsSandboxConfig().api_id}),
    }


async def configure_messaging(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    names: list[str],
    accounts: Mapping[str, tuple[dict[str, Any], dict[str, str]]],
) -> None:
    """Give each demo connection the sandbox channel accounts, its company name and no quiet hours."""
    async with sessions.begin() as session:
        for name in names:
            record = await connections.get_connection(session, name)
            set_policy(record, {"quiet_hours": "", "company_name": COMPANY})
            for channel, (config, secrets) in accounts.items():
                await set_account(session, settings, record, channel, config, secrets)


@dataclass(frozen=True)
class ProvisionedFunnel:
    """A provisioned funnel as a person in the CRM sees it: its pipeline, stages and fields."""

    pipeline_id: str
    stages: dict[str, str]  # template stage code -> CRM stage id
    fields: dict[str, str]  # template field code -> how the CRM names it on a deal

    @classmethod
    async def load(cls, sessions: async_sessionmaker[AsyncSession], template_key: str) -> ProvisionedFunnel:
        async with sessions() as session:
            funnel = await session.scalar(select(Funnel).where(Funnel.template_key == template_key))
            assert funnel is not None and funnel.crm_pipeline_id is not None, template_key
            stages = await session.scalars(select(FunnelStage).where(FunnelStage.funnel_id == funnel.id))
            fields = await session.scalars(
                select(FunnelMapping).where(
                    FunnelMapping.funnel_id == funnel.id, FunnelMapping.kind == "field"
                )
            )
            return cls(
                funnel.crm_pipeline_id,
                {s.code: str(s.crm_stage_id) for s in stages},
                {f.code: f.crm_name or f.crm_id for f in fields},
            )


async def play_message_scenarios(
    sessions: async_sessionmaker[AsyncSession], kits: Mapping[str, tuple[SandboxKit, SandboxAccount]]
) -> None:
    """Three clients, each with a phone and an email in the CRM: one booked for tomorrow (the
    reminder), one just serviced (the survey), one lost and being won back (the personal offer). `kits`: connection name -> the sandbox kit and account behind it."""
    regular = await ProvisionedFunnel.load(sessions, "auto_service.regular_clients")
    kit, account = kits["demo-amocrm"]
    user = kit.user(account)
    try:
        visit = datetime.now(UTC) + timedelta(hours=20)
        booked = await user.create_deal(
            "Плановое ТО (scheduled service)",
            regular.pipeline_id,
            regular.stages["VISIT_CONFIRMED"],
            12_000,
            {regular.fields["visit_at"]: visit},
        )
        await user.add_contact(booked, "Иван Петров", "+7 916 000-00-01", "ivan.petrov@example.ru")
        serviced = await user.create_deal(
            "Замена масла (oil change)", regular.pipeline_id, regular.stages["SERVICE_VISIT"], 4_500
        )
        await user.add_contact(serviced, "Ольга Смирнова", "+7 916 000-00-02", "olga.smirnova@example.ru")
        await user.move_deal(serviced, regular.pipeline_id, regular.stages["SATISFACTION"])
    finally:
        await user.aclose()

    win_back = await ProvisionedFunnel.load(sessions, "base.win_back")
    kit, account = kits["demo-bitrix24"]
    user = kit.user(account)
    try:
        # Straight into the alternative offers: a Bitrix24 webhook names only the deal, so a deal
        # created in one stage and moved at once may be first read in the second anyway.
        lost = await user.create_deal(
            "Возврат клиента (win-back)",
            win_back.pipeline_id,
            win_back.stages["ALT_OFFERS"],
            90_000,
            {win_back.fields["refusal_reason"]: "Выбрал другого подрядчика (chose another contractor)"},
        )
        await user.add_contact(lost, "Сергей Кузнецов", "+7 916 000-00-03", "sergey.kuznetsov@example.ru")
    finally:
        await user.aclose()


async def messages_sent(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """automation -> messages it sent (the demo's summary)."""
    async with sessions() as session:
        rows = await session.execute(
            select(Message.automation, func.count())
            .where(Message.status == MessageStatus.SENT)
            .group_by(Message.automation)
        )
        return {str(automation): int(count) for automation, count in rows}
