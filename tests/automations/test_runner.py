"""Template automations in the service, over the CRM sandboxes and a real database: deals are
mirrored through app.deals.ingest from the CRM's API, the sweep runs with an explicit `now`, each
trigger queues its actions' outbox commands and messages exactly once, and the outbox delivers the
CRM commands into the sandbox. Messages are asserted as rows (their delivery is app.messages')."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from app.automations.engine import add_months
from app.automations.runner import apply_automations
from app.automations.sweep import sweep_stages
from app.connections.models import Connection
from app.deals.mirror import MirrorResult
from app.deals.models import Deal, StageTransition
from app.funnels.models import FunnelMapping
from app.messages.models import DealContacts
from app.outbox.items import marker
from app.rules.engine import field_value, option_code
from app.rules.service import FunnelContext, deal_state, load_funnel
from connectors.base import CreatedLookup, DealSnapshot
from tests.automations.runner_bench import TEMPLATE, WINBACK_FUNNEL, AutoBench, auto
from tests.support.matrix import each_crm_on_one_database, on_sqlite_only

__all__ = ["auto"]

BOTH_CRMS_ON_SQLITE = [
    on_sqlite_only(),
    pytest.mark.parametrize("crm", ["bitrix24", "amocrm"]),
]


def test_the_sweep_reads_only_stages_where_something_can_be_due() -> None:
    # stalled in QUALIFY, dates anywhere, won/lost/recurring in the closed stages
    assert sweep_stages(TEMPLATE) == {s.code for s in TEMPLATE.stages}
    only_closing = TEMPLATE.model_copy(
        update={"automations": [a for a in TEMPLATE.automations if a.code in ("nudge", "checkup")]}
    )
    assert sweep_stages(only_closing) == {"QUALIFY", "WON", "LOST"}
    entry_only = TEMPLATE.model_copy(update={"automations": [TEMPLATE.automations[0]]})
    assert sweep_stages(entry_only) == set()  # such a funnel is skipped without reading a deal


async def _replay_latest_entry(auto: AutoBench, crm_deal_id: str) -> int:
    """Evaluate the deal's latest stage entry again (a re-run after a crash): rows added."""
    async with auto.p.sessions.begin() as session:
        deal = await session.scalar(select(Deal).where(Deal.crm_deal_id == crm_deal_id))
        assert deal is not None
        transition = await session.scalar(
            select(StageTransition)
            .where(StageTransition.deal_id == deal.id)
            .order_by(StageTransition.id.desc())
        )
        record = await session.get(Connection, auto.p.record.id)
        assert transition is not None and record is not None
        outcome = await apply_automations(session, record, MirrorResult(entered=[(deal, transition)]))
    return outcome.enqueued


@each_crm_on_one_database()
async def test_stage_entry_and_stalled_automations_run_their_actions_once(auto: AutoBench) -> None:
    deal_id = auto.create("Заявка Иванова", "NEW")
    left_id = auto.create("Заявка Смирнова", "NEW")
    await auto.mirror(deal_id, left_id)
    assert await auto.rows() == 0  # NEW fires nothing

    auto.move(deal_id, "QUALIFY")
    auto.move(left_id, "QUALIFY")
    result = await auto.mirror(deal_id, left_id)
    assert result.automations.enqueued == 8  # greet's four actions, for each deal

    commands = await auto.commands(deal_id)
    assert [c.kind for c in commands] == ["task", "fields"]
    task, fields = commands
    assert task.payload["title"] == "Позвонить: Заявка Иванова"
    assert task.payload["responsible_id"] == (await auto.deal(deal_id)).responsible_id
    assert list(fields.payload["values"].values()) == ["приветствие отправлено"]
    notify, webhook = await auto.messages(deal_id)
    assert (notify.automation, notify.payload) == (
        "greet",
        {
            "kind": "notify",
            "channels": ["email"],
            "message": {"ru": "Здравствуйте, {contact.name}!", "en": "Hello, {contact.name}!"},
            "subject": {"ru": "Заявка {deal.title}", "en": "Request {deal.title}"},
        },
    )
    assert webhook.channel == "webhook" and webhook.payload is not None
    assert webhook.payload["event"] == "deal.qualified"
    assert webhook.payload["data"]["stage"] == "QUALIFY" and webhook.payload["data"]["id"] == deal_id

    # Evaluating again adds nothing: the same entry replayed, the deals mirrored again unchanged.
    rows = await auto.rows()
    assert await _replay_latest_entry(auto, deal_id) == 0
    assert (await auto.mirror(deal_id, left_id)).automations.enqueued == 0
    assert await auto.rows() == rows

    await auto.drain()
    connector = auto.sandbox.connector()
    try:
        found = await connector.find_created("task", [CreatedLookup("t", deal_id, marker(task.id))])
        [snapshot] = await connector.get_deals([deal_id])
    finally:
        await connector.aclose()
    assert found.keys() == {"t"}  # the task is in the CRM
    [key] = fields.payload["values"]
    assert snapshot.fields[key] in ("приветствие отправлено", ["приветствие отправлено"])

    # Stalled: two days in QUALIFY moves the deal on; the one that already left is void.
    auto.move(left_id, "OFFER")
    await auto.mirror(left_id)
    entered = await auto.entered_at(deal_id)
    assert (await auto.sweep(entered + timedelta(days=1))).enqueued == 0
    assert (await auto.sweep(entered + timedelta(days=2, minutes=1))).enqueued == 1
    assert (await auto.sweep(entered + timedelta(days=2, minutes=2))).enqueued == 0
    [move] = [c for c in await auto.commands(deal_id) if c.kind == "move"]
    assert move.payload["stage_id"] == auto.stage_ids["OFFER"]
    assert [c.kind for c in await auto.commands(left_id)] == ["task", "fields"]

    await auto.drain()
    connector = auto.sandbox.connector()
    try:
        [snapshot] = await connector.get_deals([deal_id])
    finally:
        await connector.aclose()
    assert snapshot.stage_id == auto.stage_ids["OFFER"]


def _bind_contact(auto: AutoBench, crm_deal_id: str) -> str:
    if auto.crm == "bitrix24":
        return str(auto.sandbox.box.create_contact(int(crm_deal_id), primary=True, NAME="Пётр"))
    return str(auto.sandbox.box.create_contact(int(crm_deal_id), is_main=True, name="Пётр"))


@on_sqlite_only()
@pytest.mark.parametrize("crm", ["bitrix24", "amocrm"])
async def test_won_creates_a_repeat_deal_and_recurs_lost_notifies(
    auto: AutoBench, caplog: pytest.LogCaptureFixture
) -> None:
    won_id = auto.create("Клиент Петров", "OFFER")
    await auto.mirror(won_id)
    contact_id = _bind_contact(auto, won_id)
    async with auto.p.sessions.begin() as session:  # as app.messages caches them with the mirror
        session.add(
            DealContacts(deal_id=(await auto.deal(won_id)).id, contacts=[{"id": contact_id, "name": "Пётр"}])
        )

    auto.move(won_id, "WON")
    assert (await auto.mirror(won_id)).automations.enqueued == 1
    assert await _replay_latest_entry(auto, won_id) == 0
    [create] = await auto.commands(won_id)
    source = await auto.deal(won_id)
    assert create.kind == "deal"
    assert create.payload == {
        "pipeline_id": auto.pipeline_id,
        "stage_id": auto.stage_ids["NEW"],
        "title": "Повтор: Клиент Петров",
        "fields": {},
        "responsible_id": source.responsible_id,
        "contact_ids": [contact_id],
    }
    await auto.drain()
    async with auto.p.sessions() as session:
        created = await session.get(type(create), create.id)
    assert created is not None and created.crm_result_id
    connector = auto.sandbox.connector()
    try:
        [new_deal] = await connector.get_deals([created.crm_result_id])
        contacts = await connector.get_deal_contacts([created.crm_result_id])
    finally:
        await connector.aclose()
    assert (new_deal.title, new_deal.stage_id) == ("Повтор: Клиент Петров", auto.stage_ids["NEW"])
    assert [c.id for c in contacts[created.crm_result_id]] == [contact_id]

    # Every six months after the win: once per recurrence.
    due = add_months(await auto.entered_at(won_id), 6)
    assert (await auto.sweep(due - timedelta(hours=1))).enqueued == 0
    assert (await auto.sweep(due + timedelta(hours=1))).enqueued == 1
    assert (await auto.sweep(due + timedelta(hours=2))).enqueued == 0
    recurring = (await auto.commands(won_id))[-1]
    assert (recurring.kind, recurring.payload["title"]) == ("task", "Пригласить на осмотр")
    await auto.drain()

    # Lost for a reason "sorry" names: its message at once; the win-back's funnel is not provisioned.
    lost_id = auto.create("Клиент Сидоров", "OFFER")
    await auto.mirror(lost_id)
    auto.move(lost_id, "LOST")
    await auto.edit(lost_id, "loss_reason", "price")  # the reason given as the deal is lost
    # The deal holds the CRM's id of the reason (amoCRM loss_reason_id, the Bitrix24 list item of
    # the reason field), which provisioning recorded for the reason's code.
    assert (await auto.mirror(lost_id)).automations.enqueued == 1
    async with auto.p.sessions() as session:
        recorded = {(m.kind, m.code): m.crm_id for m in await session.scalars(select(FunnelMapping))}
    kind, code = ("loss_reason", "price") if auto.crm == "amocrm" else ("field_option", "loss_reason:price")
    assert (await auto.deal(lost_id)).loss_reason == recorded[(kind, code)]
    [sorry] = await auto.messages(lost_id)
    assert sorry.automation == "sorry" and sorry.payload is not None
    assert sorry.payload["channels"] == ["telegram"]
    rows = await auto.rows()
    with caplog.at_level(logging.WARNING, logger="funnelsync.automations"):
        outcome = await auto.sweep(await auto.entered_at(lost_id) + timedelta(days=30, hours=1))
    assert outcome.enqueued == 0 and await auto.rows() == rows
    warnings = [r.getMessage() for r in caplog.records if WINBACK_FUNNEL in r.getMessage()]
    assert len(warnings) == 1 and "not provisioned" in warnings[0]


@on_sqlite_only()
@pytest.mark.parametrize("crm", ["bitrix24", "amocrm"])
async def test_a_date_field_fires_before_and_after_it(auto: AutoBench) -> None:
    deal_id = auto.create("Запись на приём", "NEW")
    visit = (datetime.now(UTC) + timedelta(days=5)).replace(second=0, microsecond=0)
    await auto.edit(deal_id, "visit_at", visit)
    await auto.mirror(deal_id)
    assert await auto.rows() == 0

    assert (await auto.sweep(visit - timedelta(days=1, minutes=1))).enqueued == 0
    assert (await auto.sweep(visit - timedelta(days=1) + timedelta(minutes=1))).enqueued == 1
    assert (await auto.sweep(visit - timedelta(hours=12))).enqueued == 0
    [reminder] = await auto.messages(deal_id)
    assert reminder.automation == "visit_reminder" and reminder.payload is not None
    assert reminder.payload["channels"] == ["sms"]

    assert (await auto.sweep(visit + timedelta(days=1, minutes=1))).enqueued == 1
    assert (await auto.sweep(visit + timedelta(days=1, minutes=2))).enqueued == 0
    survey = (await auto.messages(deal_id))[-1]
    assert survey.automation == "visit_survey" and survey.payload is not None
    assert survey.payload["event"] == "visit.survey"
    assert survey.payload["data"]["fields"]["visit_at"] is not None
    assert await auto.commands(deal_id) == []


@each_crm_on_one_database()
async def test_set_field_writes_the_amount_an_enumeration_and_the_loss_reason(auto: AutoBench) -> None:
    """Each as the CRM takes it: the amount as the deal's own (Bitrix24 OPPORTUNITY, amoCRM price),
    an enumeration and the loss reason by the ids provisioning recorded (a Bitrix24 list item's ID:
    its sandbox, like a portal, stores nothing else; amoCRM's loss_reason_id, a select's text)."""
    deal_id = auto.create("Отложенная заявка", "NEW")
    await auto.mirror(deal_id)
    auto.move(deal_id, "WAIT")
    assert (await auto.mirror(deal_id)).automations.enqueued == 2
    amount, source = await auto.commands(deal_id)
    assert (amount.payload["amount"], amount.payload["values"]) == ("1500.5", {})
    async with auto.p.sessions() as session:
        recorded = {(m.kind, m.code): m for m in await session.scalars(select(FunnelMapping))}
    [value] = source.payload["values"].values()
    if auto.crm == "bitrix24":
        assert value == recorded[("field_option", "source:referral")].crm_id
    else:
        assert value == "Рекомендация"
    await auto.drain()
    [snapshot] = await _read(auto, deal_id)
    # amoCRM keeps a lead's price in whole units.
    assert snapshot.amount == (Decimal("1500.5") if auto.crm == "bitrix24" else Decimal("1501"))

    # Lost without a reason for 60 days: "no_reason" gives it one (amoCRM keeps a reason only on a lost lead).
    auto.move(deal_id, "LOST")
    await auto.mirror(deal_id)
    assert (await auto.sweep(await auto.entered_at(deal_id) + timedelta(days=60, minutes=1))).enqueued == 1
    reason = (await auto.commands(deal_id))[-1]
    if auto.crm == "bitrix24":
        assert reason.payload["values"] == {
            recorded[("field", "loss_reason")].crm_name: recorded[("field_option", "loss_reason:spam")].crm_id
        }
    else:
        assert reason.payload["loss_reason_id"] == recorded[("loss_reason", "spam")].crm_id
    await auto.drain()

    # Mirrored back, the service reads each value as the template's code.
    await auto.mirror(deal_id)
    deal = await auto.deal(deal_id)
    rules = (await load_funnel_rules(auto, deal)).rules
    assert option_code(rules, "source", field_value(rules, deal_state(deal), "source")) == "referral"
    assert option_code(rules, "loss_reason", deal.loss_reason) == "spam"


async def _read(auto: AutoBench, *crm_deal_ids: str) -> list[DealSnapshot]:
    connector = auto.sandbox.connector()
    try:
        return await connector.get_deals(list(crm_deal_ids))
    finally:
        await connector.aclose()


async def load_funnel_rules(auto: AutoBench, deal: Deal) -> FunnelContext:
    async with auto.p.sessions() as session:
        record = await session.get(Connection, auto.p.record.id)
        assert record is not None and deal.funnel_id is not None
        context = await load_funnel(session, record, deal.funnel_id, templates=lambda key: TEMPLATE)
    assert context is not None
    return context
