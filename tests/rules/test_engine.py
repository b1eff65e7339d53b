"""The pure rules: stage entry, mandatory fields, reverts, follow-ups, SLA, keys and assignees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from app.outbox.statuses import RuleName
from app.rules.engine import (
    DealState,
    FunnelRules,
    PreviousFollowUp,
    entry_scope,
    follow_up,
    is_filled,
    on_entry,
    parse_when,
    sla_escalation,
)
from funnel_templates.loader import library

TYPICAL = library()["general.typical"]
REPAIR = library()["auto_service.repair"]
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
ENTERED = NOW - timedelta(seconds=5)
ENTRY = 17  # the stage transition's id


def rules(template: Any = TYPICAL, **settings: Any) -> FunnelRules:
    codes = [f.code for f in template.fields] + ["loss_reason"]
    return FunnelRules(
        template=template,
        pipeline_id="3",
        stage_ids={s.code: f"C3:{s.code}" for s in template.stages},
        field_keys={c: [f"id-{c}", f"UF_CRM_{c.upper()}"] for c in codes}
        | {"loss_reason": ["loss_reason_id", "UF_CRM_LOSS_REASON"]},
        settings=settings,
    )


def deal(amount: str | None = "0", responsible: str | None = "7", **fields: Any) -> DealState:
    return DealState(
        id=42,
        crm_deal_id="1001",
        title="Сделка",
        amount=Decimal(amount) if amount is not None else None,
        responsible_id=responsible,
        fields=fields,
    )


def enter(
    stage: str, d: DealState | None = None, frm: str | None = "LEADS", r: FunnelRules | None = None
) -> Any:
    return on_entry(r or rules(), d or deal(), stage, entry_id=ENTRY, now=NOW, from_stage_code=frm)


def test_entry_creates_the_templates_tasks_for_the_responsible() -> None:
    [task] = enter("NEW_REQUEST")
    assert task.kind == "task"
    assert task.payload["title"] == "Связаться с клиентом по новой заявке"
    assert task.payload["due_at"] == (NOW + timedelta(minutes=2)).isoformat()
    assert task.payload["responsible_id"] == "7" and task.payload["crm_deal_id"] == "1001"
    assert task.key == f"{entry_scope(42, 'NEW_REQUEST', ENTRY)}:task:0"
    assert enter("LEADS") == []


def test_keys_are_the_same_when_the_same_entry_is_evaluated_again() -> None:
    first = [e.key for e in enter("NEW_REQUEST")]
    again = [e.key for e in on_entry(rules(), deal(), "NEW_REQUEST", entry_id=ENTRY,
                                      now=NOW + timedelta(minutes=9), from_stage_code="LEADS")]  # fmt: skip
    later_entry = on_entry(
        rules(), deal(), "NEW_REQUEST", entry_id=ENTRY + 1, now=NOW, from_stage_code="LEADS"
    )
    assert first == again
    assert first != [e.key for e in later_entry]


def test_missing_required_field_with_task_action_names_the_field() -> None:
    [task] = enter("QUALIFIED")
    assert "«Бюджет клиента»" in task.payload["title"] and task.key.endswith(":missing:task")
    assert enter("QUALIFIED", deal(UF_CRM_BUDGET="50000|RUB")) == []
    assert enter("QUALIFIED", deal(UF_CRM_BUDGET="|RUB"))  # only a currency: still empty


def test_amount_is_a_builtin_that_must_be_positive() -> None:
    assert "«Сумма сделки»" in enter("OFFER_SENT", deal("0"))[0].payload["title"]
    assert enter("OFFER_SENT", deal(None))
    assert enter("OFFER_SENT", deal("10")) == []


def test_contact_and_company_are_never_enforced() -> None:
    assert is_filled(rules(), deal(), "contact") is None
    assert is_filled(rules(), deal(), "company") is None
    assert is_filled(rules(), deal(responsible=None), "responsible") is False


def test_lost_without_reason_reverts_to_where_it_came_from_with_a_comment() -> None:
    move, comment = enter("LOST", frm="NEW_REQUEST")
    assert move.kind == "move"
    # The CRM's wire payload only: which rule queued it travels beside it (Effect.rule).
    assert move.payload == {"crm_deal_id": "1001", "pipeline_id": "3", "stage_id": "C3:NEW_REQUEST"}
    assert (move.rule, comment.rule) == (RuleName.REVERT_MOVE, RuleName.REVERT_COMMENT)
    assert move.entry_id == comment.entry_id == ENTRY
    assert comment.kind == "comment" and "«Причина отказа»" in comment.payload["text"]
    assert "«Новая заявка»" in comment.payload["text"]


@pytest.mark.parametrize("reason", [{"loss_reason_id": "21403207"}, {"UF_CRM_LOSS_REASON": "45"}])
def test_lost_with_a_reason_from_either_crm_stays(reason: dict[str, str]) -> None:
    assert enter("LOST", deal(**reason), frm="NEW_REQUEST") == []


def test_revert_without_a_known_previous_stage_only_comments() -> None:
    [comment] = enter("LOST", frm=None)
    assert comment.kind == "comment" and "нельзя" in comment.payload["text"]


def test_deferred_revert_skips_the_stages_tasks_and_follow_up() -> None:
    effects = enter("DEFERRED", frm="QUALIFIED")
    assert [e.kind for e in effects] == ["move", "comment"]


def test_roles_supervisor_and_declared_roles() -> None:
    [task] = enter("DIAGNOSTICS", deal(UF_CRM_VISIT_AT="", UF_CRM_VEHICLE="Lada"), r=rules(REPAIR))[1:]
    assert (
        task.payload["responsible_id"] == "7" and "«Автомеханик» не назначена" in task.payload["description"]
    )
    mapped = rules(REPAIR, roles={"mechanic": "99"})
    tasks = [e for e in enter("DIAGNOSTICS", deal(), r=mapped) if e.key.endswith(":task:0")]
    assert (
        tasks[0].payload["responsible_id"] == "99" and "не назначена" not in tasks[0].payload["description"]
    )


def test_follow_up_task_at_the_date_and_moved_with_it() -> None:
    when = NOW + timedelta(days=3)
    d = deal(UF_CRM_NEXT_CONTACT_AT=when.isoformat())
    [task] = enter("DEFERRED", d, frm="QUALIFIED")
    assert task.payload["title"] == "Следующий контакт по отложенной заявке"
    assert task.payload["due_at"] == when.isoformat()
    later = when + timedelta(days=1)
    moved = deal(UF_CRM_NEXT_CONTACT_AT=str(int(later.timestamp())))  # amoCRM style: unix seconds

    # In the CRM already: its deadline moves (no second task).
    created = PreviousFollowUp(
        5, when, task.payload["title"], status="done", crm_task_id="901", last_command_id=5
    )
    assert follow_up(rules(), d, "DEFERRED", entry_id=ENTRY, previous=created) == []
    [move] = follow_up(rules(), moved, "DEFERRED", entry_id=ENTRY, previous=created)
    assert move.kind == "task_due" and move.payload["task_id"] == "901"
    assert move.payload["due_at"] == later.isoformat() and ":fu-move:5:" in move.key
    # Moved once already (command 7): moving back is a new key, so it is not mistaken for a repeat.
    again = PreviousFollowUp(
        5, later, task.payload["title"], status="done", crm_task_id="901", last_command_id=7
    )
    [back] = follow_up(rules(), d, "DEFERRED", entry_id=ENTRY, previous=again)
    assert back.payload["due_at"] == when.isoformat() and ":fu-move:7:" in back.key

    # Still in the outbox: re-dated there.
    queued = PreviousFollowUp(5, when, task.payload["title"], status="pending")
    [redate] = follow_up(rules(), moved, "DEFERRED", entry_id=ENTRY, previous=queued)
    assert redate.kind == "redate" and redate.payload == {"command_id": 5, "due_at": later.isoformat()}

    # The CRM refused it for good: created again for the new date.
    dead = PreviousFollowUp(5, when, task.payload["title"], status="dead")
    [recreated] = follow_up(rules(), moved, "DEFERRED", entry_id=ENTRY, previous=dead)
    assert recreated.kind == "task" and ":fu:5:" in recreated.key


def test_follow_up_lead_time_is_taken_off_the_date() -> None:
    lead = REPAIR.model_copy(deep=True)
    stage = lead.stage("DIAGNOSTICS")
    assert stage.follow_up is not None
    spec = stage.follow_up.model_copy(update={"lead_time": timedelta(hours=2)})
    patched = lead.model_copy(
        update={"stages": [s.model_copy(update={"follow_up": spec}) if s.code == "DIAGNOSTICS" else s
                           for s in lead.stages]}
    )  # fmt: skip
    visit = NOW + timedelta(days=1)
    [task] = follow_up(rules(patched), deal(UF_CRM_VISIT_AT=visit.isoformat()), "DIAGNOSTICS",
                       entry_id=ENTRY, previous=None)  # fmt: skip
    assert task.payload["due_at"] == (visit - timedelta(hours=2)).isoformat()


def test_sla_escalates_once_after_the_deadline_to_the_supervisor() -> None:
    r = rules(supervisor_id="1")
    assert (
        sla_escalation(
            r, deal(), "NEW_REQUEST", entry_id=ENTRY, entered_at=ENTERED, now=ENTERED + timedelta(minutes=2)
        )
        is None
    )
    late = sla_escalation(
        r, deal(), "NEW_REQUEST", entry_id=ENTRY, entered_at=ENTERED, now=ENTERED + timedelta(minutes=3)
    )
    later = sla_escalation(
        r, deal(), "NEW_REQUEST", entry_id=ENTRY, entered_at=ENTERED, now=ENTERED + timedelta(hours=3)
    )
    assert late is not None and later is not None and late.key == later.key
    assert late.payload["responsible_id"] == "1"
    fallback = sla_escalation(
        rules(), deal(), "NEW_REQUEST", entry_id=ENTRY, entered_at=ENTERED, now=NOW + timedelta(hours=1)
    )
    assert fallback is not None and fallback.payload["responsible_id"] == "7"
    assert "Руководитель не указан" in fallback.payload["description"]
    assert (
        sla_escalation(
            r, deal(), "QUALIFIED", entry_id=ENTRY, entered_at=ENTERED, now=NOW + timedelta(days=9)
        )
        is None
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1795420800", datetime(2026, 11, 23, 8, 0, tzinfo=UTC)),
        (["1795420800"], datetime(2026, 11, 23, 8, 0, tzinfo=UTC)),
        ("2026-11-23T11:00:00+03:00", datetime(2026, 11, 23, 8, 0, tzinfo=UTC)),
        ("2026-11-23", datetime(2026, 11, 23, tzinfo=UTC)),
        ("", None),
        (None, None),
        ("завтра", None),
    ],
)
def test_parse_when(value: Any, expected: datetime | None) -> None:
    assert parse_when(value) == expected


def test_missing_field_with_comment_action_leaves_a_note() -> None:
    stages = [s.model_copy(update={"on_missing_fields": "comment"}) if s.code == "QUALIFIED" else s
              for s in TYPICAL.stages]  # fmt: skip
    [note] = enter("QUALIFIED", r=rules(TYPICAL.model_copy(update={"stages": stages})))
    assert note.kind == "comment" and note.key.endswith(":missing:comment")
    assert "«Бюджет клиента»" in note.payload["text"]


def test_only_the_comment_that_reports_a_revert_waits_for_its_move() -> None:
    """Issue #11 item 7: "moved back" is sent only once the move is done. The key stays the one
    the comment always had, so an effect queued before the change is still recognised."""
    move, comment = enter("LOST", frm="NEW_REQUEST")
    assert comment.after == move.key == f"{entry_scope(42, 'LOST', ENTRY)}:revert:move"
    assert comment.key == f"{entry_scope(42, 'LOST', ENTRY)}:revert:comment"
    # These report no move, so nothing holds them back.
    [nowhere] = enter("LOST", frm=None)
    stages = [s.model_copy(update={"on_missing_fields": "comment"}) if s.code == "QUALIFIED" else s
              for s in TYPICAL.stages]  # fmt: skip
    [note] = enter("QUALIFIED", r=rules(TYPICAL.model_copy(update={"stages": stages})))
    assert nowhere.after is None and note.after is None
    assert all(
        e.after is None
        for e in enter("DIAGNOSTICS", deal(UF_CRM_VISIT_AT="", UF_CRM_VEHICLE="Lada"), r=rules(REPAIR))
    )
