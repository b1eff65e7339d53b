"""The automations bench: a funnel with one automation of each trigger and action kind, provisioned
into a CRM sandbox; deals mirrored over the CRM's real API through app.deals.ingest (the one ingest
path, which runs the rules and then the automations), the sweep run with an explicit `now`, and the
outbox drained into the sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.automations.sweep import SweepOutcome, sweep_automations
from app.connections.models import Connection
from app.deals.ingest import IngestResult, ingest
from app.deals.models import Deal, StageTransition
from app.funnels.models import Funnel, FunnelMapping, FunnelStage
from app.messages.models import Message
from app.outbox.delivery import drain_connection
from app.outbox.models import OutboxCommand
from app.outbox.statuses import RuleName
from connectors.base import FieldUpdate
from funnel_templates.loader import library
from funnel_templates.schema import FunnelTemplate
from tests.funnels.conftest import Provisioner
from tests.support.crm import CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.small_template import TemplateData, small_template

KEY = "test.small"
WINBACK_FUNNEL = "general.typical"  # never provisioned here: its create_deal records nothing


def _text(ru: str, en: str) -> dict[str, str]:
    return {"ru": ru, "en": en}


def _automations(data: TemplateData) -> None:
    """No stage rules (their tasks would only add noise), two more fields, and the automations."""
    for stage in data["stages"]:
        for rule in ("tasks", "sla", "required_fields", "on_missing_fields", "follow_up"):
            stage.pop(rule, None)
    data["fields"] += [
        {"code": "visit_at", "name": _text("Дата визита", "Visit"), "type": "datetime"},
        {"code": "note", "name": _text("Заметка", "Note"), "type": "string"},
    ]
    subject = _text("Заявка {deal.title}", "Request {deal.title}")
    data["automations"] = [
        {
            "code": "greet",
            "name": _text("Приветствие", "Greeting"),
            "trigger": {"kind": "stage_entry", "stage": "QUALIFY"},
            "actions": [
                {
                    "kind": "notify",
                    "channels": ["email"],
                    "message": _text("Здравствуйте, {contact.name}!", "Hello, {contact.name}!"),
                    "subject": subject,
                },
                {"kind": "webhook", "event": "deal.qualified"},
                {
                    "kind": "task",
                    "title": _text("Позвонить: {deal.title}", "Call: {deal.title}"),
                    "due_in": "1h",
                },
                {"kind": "set_field", "field": "note", "value": "приветствие отправлено"},
            ],
        },
        {
            "code": "nudge",
            "name": _text("Застряла", "Stalled"),
            "trigger": {"kind": "stalled", "stage": "QUALIFY", "after": "2d"},
            "actions": [{"kind": "move", "stage": "OFFER"}],
        },
        {
            "code": "visit_reminder",
            "name": _text("Напоминание", "Reminder"),
            "trigger": {"kind": "before_date", "field": "visit_at", "offset": "1d"},
            "actions": [
                {"kind": "notify", "channels": ["sms"], "message": _text("Завтра визит", "Visit tomorrow")}
            ],
        },
        {
            "code": "visit_survey",
            "name": _text("Опрос", "Survey"),
            "trigger": {"kind": "after_date", "field": "visit_at", "offset": "1d"},
            "actions": [{"kind": "webhook", "event": "visit.survey"}],
        },
        {
            "code": "repeat_sale",
            "name": _text("Повторная продажа", "Repeat sale"),
            "trigger": {"kind": "won"},
            "actions": [
                {
                    "kind": "create_deal",
                    "funnel": KEY,
                    "title": _text("Повтор: {deal.title}", "Repeat: {deal.title}"),
                }
            ],
        },
        {
            "code": "checkup",
            "name": _text("Плановый осмотр", "Check-up"),
            "trigger": {"kind": "recurring", "every_months": 6},
            "actions": [
                {
                    "kind": "task",
                    "title": _text("Пригласить на осмотр", "Invite to a check-up"),
                    "due_in": "1d",
                }
            ],
        },
        {
            "code": "park",
            "name": _text("Отложена", "Parked"),
            "trigger": {"kind": "stage_entry", "stage": "WAIT"},
            "actions": [
                {"kind": "set_field", "field": "amount", "value": 1500.5},
                {"kind": "set_field", "field": "source", "value": "referral"},
            ],
        },
        {
            "code": "no_reason",
            "name": _text("Без причины", "No reason"),
            "trigger": {"kind": "stalled", "stage": "LOST", "after": "60d"},
            "actions": [{"kind": "set_field", "field": "loss_reason", "value": "spam"}],
        },
        {
            "code": "sorry",
            "name": _text("Жаль", "Sorry"),
            "trigger": {"kind": "lost", "reasons": ["price"]},
            "actions": [{"kind": "notify", "channels": ["telegram"], "message": _text("Жаль", "Sorry")}],
        },
        {
            "code": "winback",
            "name": _text("Возврат", "Win-back"),
            "trigger": {"kind": "lost", "delay": "30d"},
            "actions": [
                {"kind": "create_deal", "funnel": WINBACK_FUNNEL, "title": _text("Возврат", "Win-back")}
            ],
        },
    ]


TEMPLATE: FunnelTemplate = small_template(_automations)


@dataclass
class AutoBench:
    sandbox: CRMSandbox
    p: Provisioner
    stage_ids: dict[str, str]  # stage code -> CRM stage id
    pipeline_id: str

    @property
    def crm(self) -> str:
        return self.sandbox.crm

    # --- a person using the CRM ---------------------------------------------------------------

    def create(self, title: str, stage: str) -> str:
        return self.sandbox.create_deal(title, self.pipeline_id, self.stage_ids[stage])

    def move(self, crm_deal_id: str, stage: str) -> None:
        self.sandbox.move_deal(crm_deal_id, self.pipeline_id, self.stage_ids[stage])

    async def edit(self, crm_deal_id: str, code: str, value: Any) -> None:
        """Set a template field (a datetime as such; `loss_reason` by the template's reason code)."""
        async with self.p.sessions() as session:
            mapped = {(m.kind, m.code): m for m in await session.scalars(select(FunnelMapping))}
        if self.crm == "amocrm":
            if code == "loss_reason":
                values: dict[str, Any] = {"loss_reason_id": mapped[("loss_reason", value)].crm_id}
            else:
                values = {mapped[("field", code)].crm_id: value}
        else:
            row = mapped[("field", code)]
            if code == "loss_reason":
                uf = next(
                    u for u in self.sandbox.box.state()["userfields"] if u["FIELD_NAME"] == row.crm_name
                )
                name = next(r.name.ru for r in TEMPLATE.loss_reasons if r.code == value)
                value = next(o["ID"] for o in uf["LIST"] if o["VALUE"] == name)
            values = {str(row.crm_name): value.isoformat() if isinstance(value, datetime) else value}
        connector = self.sandbox.connector()
        try:
            [result] = await connector.update_deal_fields([FieldUpdate("edit", crm_deal_id, values)])
        finally:
            await connector.aclose()
        assert result.ok, result.error

    # --- FunnelSync ---------------------------------------------------------------------------

    async def mirror(self, *crm_deal_ids: str) -> IngestResult:
        """Read the deals over the CRM's API and ingest them (the reconcile's path)."""
        connector = self.sandbox.connector()
        try:
            snapshots = await connector.get_deals(list(crm_deal_ids))
        finally:
            await connector.aclose()
        async with self.p.sessions.begin() as session:
            record = await session.get(Connection, self.p.record.id)
            assert record is not None
            return await ingest(session, record, snapshots, source="reconcile")

    async def sweep(self, now: datetime) -> SweepOutcome:
        return await sweep_automations(self.p.sessions, now=now)

    async def drain(self) -> None:
        async with self.p.sessions() as session:
            record = await session.get(Connection, self.p.record.id)
        assert record is not None
        connector = self.sandbox.connector()
        try:
            result = await drain_connection(self.p.sessions, record, connector)
        finally:
            await connector.aclose()
        assert result.dead == 0 and not result.errors, result.errors

    # --- what FunnelSync recorded -------------------------------------------------------------

    async def deal(self, crm_deal_id: str) -> Deal:
        async with self.p.sessions() as session:
            deal = await session.scalar(select(Deal).where(Deal.crm_deal_id == crm_deal_id))
        assert deal is not None, f"deal {crm_deal_id} not mirrored"
        return deal

    async def entered_at(self, crm_deal_id: str) -> datetime:
        """When the deal entered its current stage (its latest transition, the CRM's clock)."""
        deal = await self.deal(crm_deal_id)
        async with self.p.sessions() as session:
            at = await session.scalar(
                select(StageTransition.at)
                .where(StageTransition.deal_id == deal.id)
                .order_by(StageTransition.id.desc())
                .limit(1)
            )
        assert at is not None
        return at

    async def commands(self, crm_deal_id: str | None = None) -> list[OutboxCommand]:
        """The automations' outbox commands (of one deal), oldest first."""
        query = select(OutboxCommand).where(OutboxCommand.rule == RuleName.AUTOMATION)
        if crm_deal_id is not None:
            query = query.where(OutboxCommand.deal_id == (await self.deal(crm_deal_id)).id)
        async with self.p.sessions() as session:
            return list(await session.scalars(query.order_by(OutboxCommand.id)))

    async def messages(self, crm_deal_id: str | None = None) -> list[Message]:
        query = select(Message)
        if crm_deal_id is not None:
            query = query.where(Message.deal_id == (await self.deal(crm_deal_id)).id)
        async with self.p.sessions() as session:
            return list(await session.scalars(query.order_by(Message.id)))

    async def rows(self) -> int:
        """Every automation row there is: outbox commands and messages."""
        async with self.p.sessions() as session:
            commands = await session.scalar(
                select(func.count())
                .select_from(OutboxCommand)
                .where(OutboxCommand.rule == RuleName.AUTOMATION)
            )
            messages = await session.scalar(select(func.count()).select_from(Message))
        return int(commands or 0) + int(messages or 0)


def templates_with_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library plus the bench's template, wherever the service looks templates up."""
    known = {**library(), KEY: TEMPLATE}
    monkeypatch.setattr("app.rules.service.library", lambda: known)


@pytest.fixture
async def auto(
    crm: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AutoBench]:
    templates_with_bench(monkeypatch)
    settings = settings_for(tmp_path, database_url)
    with crm_sandbox(crm) as sandbox:
        async with open_sessions(database_url) as sessions:
            record = sandbox.connection(settings)
            async with sessions.begin() as session:
                session.add(record)
            p = Provisioner(sandbox, sessions, settings, record)
            assert (await p.run(TEMPLATE)).applied
            async with sessions() as session:
                funnel = await session.scalar(select(Funnel))
                assert funnel is not None and funnel.crm_pipeline_id
                rows = await session.scalars(select(FunnelStage).where(FunnelStage.funnel_id == funnel.id))
                stage_ids = {s.code: str(s.crm_stage_id) for s in rows if s.crm_stage_id}
            yield AutoBench(sandbox, p, stage_ids, funnel.crm_pipeline_id)
