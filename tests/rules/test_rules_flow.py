"""Rules end to end against each CRM sandbox, on both databases: a person moves deals in the CRM, the
webhooks reach the receiver, the inbox processor mirrors them and runs the rules, the outbox delivers
the effects, and what the CRM then holds is counted. Time-driven rules get `now` passed explicitly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.db import utcnow
from app.deals.mirror import MirrorResult
from app.deals.models import Deal, StageTransition
from app.outbox.models import OutboxCommand
from app.outbox.statuses import RuleName
from app.rules.service import MissingRequiredFields, MoveRefused, apply_rules, request_move
from app.rules.timers import check_sla, past_sla, sweep_follow_ups
from app.webhooks.models import InboxEvent
from tests.support.matrix import each_crm_on_one_database
from tests.support.rules_bench import SUPERVISOR, Bench

CONTACT = "Связаться с клиентом по новой заявке"
REVIEW = "Запросить отзыв или рекомендацию у клиента"
FOLLOW_UP = "Следующий контакт по отложенной заявке"


async def transitions(bench: Bench, crm_deal_id: str) -> list[int]:
    """Ids of the deal's stage transitions (its stage entries), oldest first."""
    deal = await bench.deal(crm_deal_id)
    async with bench.p.sessions() as session:
        query = select(StageTransition.id).where(StageTransition.deal_id == deal.id)
        return list(await session.scalars(query.order_by(StageTransition.id)))


async def outbox_size(bench: Bench) -> int:
    async with bench.p.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(OutboxCommand)) or 0)


@each_crm_on_one_database()
async def test_entering_a_stage_creates_exactly_the_templates_tasks(bench: Bench) -> None:
    deal_id = bench.create("Заявка с сайта", "LEADS")
    await bench.cycle()
    assert bench.tasks(deal_id) == []  # «Лиды» asks for nothing

    bench.move(deal_id, "NEW_REQUEST")
    await bench.cycle()
    tasks = bench.tasks(deal_id)
    assert [t["title"] for t in tasks] == [CONTACT]
    mirrored = await bench.deal(deal_id)
    assert tasks[0]["responsible"] == mirrored.responsible_id

    bench.move(deal_id, "REVIEW")
    await bench.cycle()
    assert [t["title"] for t in bench.tasks(deal_id)] == [CONTACT, REVIEW]

    # Nothing new to process or deliver: running everything again creates nothing.
    await bench.cycle()
    assert len(bench.tasks(deal_id)) == 2
    assert bench.comments(deal_id) == []


@each_crm_on_one_database(crossed=True)
async def test_missing_required_field_triggers_its_action_once(bench: Bench) -> None:
    deal_id = bench.create("Без бюджета", "NEW_REQUEST")
    await bench.cycle()
    bench.move(deal_id, "QUALIFIED")  # requires «Бюджет клиента», on_missing_fields: task
    await bench.cycle()
    titles = [t["title"] for t in bench.tasks(deal_id)]
    assert titles == [CONTACT, "Заполнить обязательные поля этапа «Квалификация пройдена»: «Бюджет клиента»"]
    assert bench.stage_of(deal_id) == "QUALIFIED"  # a task, not a revert
    size = await outbox_size(bench)

    # The processor runs again over the same deliveries: nothing new is recorded or queued.
    async with bench.p.sessions.begin() as session:
        await session.execute(update(InboxEvent).values(status="pending"))
    await bench.process()
    await bench.drain()
    assert await outbox_size(bench) == size

    # The same transition evaluated again (a re-run after a crash, later, with another `now`): the
    # idempotency keys are those of the first run, so the outbox drops every effect.
    async with bench.p.sessions.begin() as session:
        deal = await session.scalar(select(Deal).where(Deal.crm_deal_id == deal_id))
        assert deal is not None
        transition = await session.scalar(
            select(StageTransition)
            .where(StageTransition.deal_id == deal.id)
            .order_by(StageTransition.id.desc())
        )
        assert transition is not None
        record = await session.get(type(bench.p.record), bench.p.record.id)
        assert record is not None
        outcome = await apply_rules(
            session,
            record,
            MirrorResult(entered=[(deal, transition)]),
            now=transition.at + timedelta(minutes=5),
        )
    assert outcome.evaluated == 1 and outcome.enqueued == 0
    await bench.drain()
    assert len(bench.tasks(deal_id)) == 2


@each_crm_on_one_database()
async def test_revert_does_not_loop(bench: Bench) -> None:
    deal_id = bench.create("Отказ без причины", "NEW_REQUEST")
    await bench.cycle()
    assert [t["title"] for t in bench.tasks(deal_id)] == [CONTACT]

    bench.move(deal_id, "LOST")  # «Отказ» requires a loss reason: revert
    await bench.cycle()
    assert bench.stage_of(deal_id) == "NEW_REQUEST"
    [comment] = bench.comments(deal_id)
    assert "«Причина отказа»" in comment and "«Новая заявка»" in comment
    # Our move came back as a webhook: matched to the command, it fired no «Новая заявка» rules.
    assert [t["title"] for t in bench.tasks(deal_id)] == [CONTACT]
    size = await outbox_size(bench)
    await bench.cycle()
    assert await outbox_size(bench) == size
    # The move names its rule and the entry into «Отказ» it answers, and the transition it came back
    # as, in columns: the payload is exactly what the CRM was sent.
    [move] = await bench.commands(deal_id, "move")
    entered_lost, came_back = (await transitions(bench, deal_id))[-2:]
    assert (move.rule, move.stage_entry_id, move.echo_transition_id) == (
        RuleName.REVERT_MOVE, entered_lost, came_back,
    )  # fmt: skip
    assert set(move.payload) == {"crm_deal_id", "pipeline_id", "stage_id"}
    [comment] = await bench.commands(deal_id, "comment")
    assert (comment.rule, comment.stage_entry_id) == (RuleName.REVERT_COMMENT, entered_lost)

    bench.move(deal_id, "LOST")  # again, still no reason: reverted again, exactly once
    await bench.cycle()
    assert bench.stage_of(deal_id) == "NEW_REQUEST"
    assert len(bench.comments(deal_id)) == 2
    assert len(await bench.commands(deal_id, "move")) == 2
    assert [t["title"] for t in bench.tasks(deal_id)] == [CONTACT]
    history = [(await bench.deal(deal_id)).crm_stage_id]
    assert history == [bench.stage_ids["NEW_REQUEST"]]


@each_crm_on_one_database(crossed=True)
async def test_sla_breach_creates_one_escalation(bench: Bench) -> None:
    deal_id = bench.create("Срочная заявка", "NEW_REQUEST")  # SLA: 2 minutes
    await bench.cycle()
    deal = await bench.deal(deal_id)
    assert deal.stage_entered_at is not None
    entered = deal.stage_entered_at

    assert await check_sla(bench.p.sessions, now=entered + timedelta(minutes=1)) == 0
    async with bench.p.sessions() as session:
        assert await past_sla(session, now=entered + timedelta(minutes=1)) == []

    late = entered + timedelta(minutes=3)
    assert await check_sla(bench.p.sessions, now=late) == 1
    assert await check_sla(bench.p.sessions, now=late + timedelta(hours=1)) == 0
    await bench.drain()
    tasks = bench.tasks(deal_id)
    assert [t["title"] for t in tasks] == [CONTACT, "Просрочен срок этапа «Новая заявка»: Срочная заявка"]
    assert tasks[1]["responsible"] == SUPERVISOR[bench.crm]

    async with bench.p.sessions() as session:
        [breach] = await past_sla(session, now=late)
    assert breach.crm_deal_id == deal_id and breach.stage == "NEW_REQUEST" and breach.escalated
    escalation = (await bench.commands(deal_id, "task"))[-1]
    assert (escalation.rule, escalation.stage_entry_id) == (RuleName.SLA_ESCALATION, breach.entry_id)
    assert breach.overdue_by == timedelta(minutes=1)

    # Leaving the stage ends the breach.
    bench.move(deal_id, "QUALIFIED")
    await bench.cycle()
    async with bench.p.sessions() as session:
        assert await past_sla(session, now=late + timedelta(days=1)) == []


def deadline(task: dict[str, Any]) -> datetime:
    """Bitrix24 keeps the ISO string we sent, amoCRM unix seconds."""
    value = task["deadline"]
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int) else datetime.fromisoformat(value)


@each_crm_on_one_database()
async def test_follow_up_task_at_the_date_and_moved_when_the_date_moves(bench: Bench) -> None:
    deal_id = bench.create("Вернуться позже", "LEADS")
    await bench.cycle()
    first = (utcnow() + timedelta(days=2)).replace(microsecond=0)
    await bench.edit(deal_id, "DEFERRED", next_contact_at=first)
    await bench.cycle()
    assert bench.stage_of(deal_id) == "DEFERRED"  # the date is there: no revert
    [task] = bench.tasks(deal_id)
    assert task["title"] == FOLLOW_UP

    assert deadline(task) == first

    moved = first + timedelta(days=1)
    await bench.edit(deal_id, next_contact_at=moved)
    await bench.cycle()
    assert await sweep_follow_ups(bench.p.sessions, now=utcnow()) == 1  # the task's deadline moves
    assert await sweep_follow_ups(bench.p.sessions, now=utcnow()) == 0
    await bench.drain()
    [task] = bench.tasks(deal_id)  # still one task, now due at the new date
    assert deadline(task) == moved
    assert bench.comments(deal_id) == []
    [move] = await bench.commands(deal_id, "task_due")
    assert move.status == "done"
    # Both found by rule and stage entry (previous_follow_ups), not by their keys.
    [created] = [c for c in await bench.commands(deal_id, "task") if c.rule == RuleName.FOLLOW_UP_TASK]
    assert move.rule == RuleName.FOLLOW_UP_DEADLINE_MOVE
    assert move.stage_entry_id == created.stage_entry_id == (await transitions(bench, deal_id))[-1]


@each_crm_on_one_database(crossed=True)
async def test_lost_with_a_loss_reason_stays_lost(bench: Bench) -> None:
    deal_id = bench.create("Купил у конкурента", "NEW_REQUEST")
    await bench.cycle()
    await bench.edit(deal_id, "LOST", loss_reason="bought_elsewhere")
    await bench.cycle()
    assert bench.stage_of(deal_id) == "LOST"
    assert bench.comments(deal_id) == [] and await bench.commands(deal_id, "move") == []


@each_crm_on_one_database()
async def test_a_move_requested_through_the_api_runs_the_stage_rules_once(bench: Bench) -> None:
    deal_id = bench.create("Через API", "LEADS")
    await bench.cycle()
    local = await bench.deal(deal_id)
    async with bench.p.sessions.begin() as session:
        with pytest.raises(MissingRequiredFields) as refused:
            await request_move(session, local.id, "OFFER_SENT")  # needs an amount
        assert refused.value.fields == ["amount"]
        with pytest.raises(MoveRefused):
            await request_move(session, local.id, "NO_SUCH_STAGE")
        queued = await request_move(session, local.id, "NEW_REQUEST", request_key="req-1")
        again = await request_move(session, local.id, "NEW_REQUEST", request_key="req-1")
    assert queued.created and not again.created and again.command_id == queued.command_id
    await bench.drain()
    await bench.process()  # the CRM confirms our move: the entry of «Новая заявка» counts once
    await bench.drain()
    [api_move] = await bench.commands(deal_id, "move")
    assert (api_move.rule, api_move.stage_entry_id) == (RuleName.API_MOVE, None)
    assert api_move.echo_transition_id == (await transitions(bench, deal_id))[-1]
    assert "origin" not in api_move.payload
    assert bench.stage_of(deal_id) == "NEW_REQUEST"
    assert [t["title"] for t in bench.tasks(deal_id)] == [CONTACT]
    await bench.cycle()
    assert len(bench.tasks(deal_id)) == 1

    # A second API move, to a stage without required fields: its entry task comes once too.
    async with bench.p.sessions.begin() as session:
        await request_move(session, local.id, "REVIEW", request_key="req-2")
    await bench.drain()
    await bench.process()
    await bench.drain()
    assert [t["title"] for t in bench.tasks(deal_id)] == [CONTACT, REVIEW]
    await bench.cycle()
    assert len(bench.tasks(deal_id)) == 2
