"""The pure rules engine as tables of cases: deal + stage entry (+ clock, + earlier follow-up) -> effects.

No database, no CRM, no clock: every case gives `now` and the deal's state. Expected effects are
written as `want(kind, key suffix after the entry's scope, after=..., **payload subset)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from app.outbox.statuses import RuleName
from app.rules.engine import (
    DealState,
    Effect,
    FunnelRules,
    PreviousFollowUp,
    entry_scope,
    follow_up,
    is_empty,
    is_filled,
    on_entry,
    parse_when,
    sla_escalation,
    stamp,
)
from app.rules.service import is_person_move
from funnel_templates.schema import FunnelTemplate
from tests.support.small_template import TemplateData, small_template, stage_data

TEMPLATE = small_template()
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
ENTRY = 31  # the stage transition's id
DEAL_ID = 42
WHEN = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)  # a follow-up date three days ahead
FOLLOW_UP_DUE = WHEN - timedelta(hours=1)  # WAIT's follow-up has a one-hour lead time
MOVED = WHEN + timedelta(days=1)
MOVED_DUE = MOVED - timedelta(hours=1)
HEADER = "FunnelSync: этап «{stage}» воронки «Малая воронка»."
NO_SUPERVISOR = "Руководитель не указан в настройках подключения; задача поставлена ответственному."
NO_MECHANIC = "Роль «Механик» не назначена в настройках подключения; задача поставлена ответственному."


def rules(template: FunnelTemplate = TEMPLATE, **settings: Any) -> FunnelRules:
    return FunnelRules(
        template=template,
        pipeline_id="3",
        stage_ids={s.code: f"C3:{s.code}" for s in template.stages},
        field_keys={
            "budget": ["901", "UF_CRM_BUDGET"],
            "next_contact_at": ["902", "UF_CRM_NEXT_CONTACT_AT"],
            "source": ["903", "UF_CRM_SOURCE"],
            "loss_reason": ["loss_reason_id", "UF_CRM_LOSS_REASON"],
        },
        settings=settings,
    )


STAFFED = rules(supervisor_id="1", roles={"mechanic": "55"})
UNSTAFFED = rules()


def deal(amount: str | None = "100", responsible: str | None = "7", **fields: Any) -> DealState:
    return DealState(
        id=DEAL_ID,
        crm_deal_id="1001",
        title="Сделка",
        amount=None if amount is None else Decimal(amount),
        responsible_id=responsible,
        fields=fields,
    )


def edited(edit: Callable[[TemplateData], None]) -> FunnelTemplate:
    return small_template(edit)


def scope(stage: str, entry: int = ENTRY) -> str:
    return entry_scope(DEAL_ID, stage, entry)


@dataclass(frozen=True)
class Want:
    kind: str
    suffix: str  # the key after the entry's scope
    after: str | None  # suffix of the key it waits for
    payload: dict[str, Any]


def want(kind: str, suffix: str, after: str | None = None, **payload: Any) -> Want:
    return Want(kind, suffix, after, payload)


# Key suffix (up to its first variable part) -> the rule the effect must name.
RULE_OF_SUFFIX = {
    ":revert:move": RuleName.REVERT_MOVE,
    ":revert:comment": RuleName.REVERT_COMMENT,
    ":missing:comment": RuleName.MISSING_FIELDS_COMMENT,
    ":missing:task": RuleName.MISSING_FIELDS_TASK,
    ":task:": RuleName.STAGE_TASK,
    ":fu:": RuleName.FOLLOW_UP_TASK,
    ":fu-redate:": RuleName.FOLLOW_UP_TASK,  # re-dates the follow-up task's own command
    ":fu-move:": RuleName.FOLLOW_UP_DEADLINE_MOVE,
    ":sla": RuleName.SLA_ESCALATION,
}


def rule_of(suffix: str) -> RuleName:
    [rule] = [r for start, r in RULE_OF_SUFFIX.items() if suffix.startswith(start)]
    return rule


def check(effects: list[Effect], wanted: list[Want], stage: str) -> None:
    assert [(e.kind, e.key) for e in effects] == [(w.kind, scope(stage) + w.suffix) for w in wanted]
    for effect, w in zip(effects, wanted, strict=True):
        assert effect.after == (scope(stage) + w.after if w.after else None), effect.key
        assert {k: effect.payload.get(k) for k in w.payload} == w.payload, effect.key
        # The rule and the entry travel as such, and never inside what is sent to the CRM.
        assert (effect.rule, effect.entry_id) == (rule_of(w.suffix), ENTRY), effect.key
        assert not {"origin", "echo_transition_id"} & effect.payload.keys(), effect.key


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def task(suffix: str, title: str, due: datetime, responsible: str | None, stage: str, note: str = "") -> Want:
    description = HEADER.format(stage=stage) + (f"\n{note}" if note else "")
    return want("task", suffix, crm_deal_id="1001", title=title, due_at=iso(due),
                responsible_id=responsible, description=description)  # fmt: skip


def entry_tasks(responsible: str | None = "7", supervisor: str = "1", mechanic: str = "55") -> list[Want]:
    """NEW's three entry tasks; an assignee of "7" where the role is someone else is the fallback."""
    return [
        task(":task:0", "Позвонить клиенту", NOW + timedelta(hours=2), responsible, "Новая"),
        task(":task:1", "Согласовать скидку", NOW + timedelta(days=1), supervisor, "Новая",
             NO_SUPERVISOR if supervisor == responsible else ""),
        task(":task:2", "Осмотреть автомобиль", NOW + timedelta(minutes=30), mechanic, "Новая",
             NO_MECHANIC if mechanic == responsible else ""),
    ]  # fmt: skip


def revert_to(stage_code: str, stage_name: str, into: str, into_name: str, missing: str) -> list[Want]:
    return [
        want("move", ":revert:move", crm_deal_id="1001", pipeline_id="3", stage_id=f"C3:{stage_code}"),
        want("comment", ":revert:comment", after=":revert:move", crm_deal_id="1001",
             text=f"Сделка возвращена на этап «{stage_name}»: для этапа «{into_name}» не заполнены "
                  f"обязательные поля: {missing}."),
    ]  # fmt: skip


def cannot_revert(into_name: str, missing: str) -> Want:
    return want("comment", ":revert:comment", text=f"Для этапа «{into_name}» не заполнены обязательные "
                f"поля: {missing}. Вернуть сделку на предыдущий этап нельзя: он неизвестен.")  # fmt: skip


def with_required(stage: str, action: str, *fields: str) -> FunnelTemplate:
    def edit(d: TemplateData) -> None:
        stage_data(d, stage).update(required_fields=list(fields), on_missing_fields=action)

    return edited(edit)


# --- stage entry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryCase:
    id: str
    stage: str
    deal: DealState
    expect: list[Want]
    came_from: str | None = "NEW"
    rules: FunnelRules = STAFFED
    previous: PreviousFollowUp | None = None


WAIT_FILLED = deal(UF_CRM_NEXT_CONTACT_AT=WHEN.isoformat())
FOLLOW_UP_TASK = task(f":fu:0:{stamp(FOLLOW_UP_DUE)}", "Перезвонить", FOLLOW_UP_DUE, "1", "Ожидание")

ENTRY_CASES = [
    # --- entry tasks: due offsets and assignees ----------------------------------------------------
    EntryCase("entry-tasks-go-to-responsible-supervisor-and-role", "NEW", deal(), entry_tasks(), None),
    EntryCase("entry-tasks-with-no-supervisor-and-role-unassigned-fall-back-to-the-responsible", "NEW",
              deal(), entry_tasks(supervisor="7", mechanic="7"), None, UNSTAFFED),
    EntryCase("role-assigned-to-nobody-falls-back", "NEW", deal(), entry_tasks(mechanic="7"), None,
              rules(supervisor_id="1", roles={"mechanic": ""})),
    EntryCase("roles-setting-of-the-wrong-shape-falls-back", "NEW", deal(), entry_tasks(mechanic="7"), None,
              rules(supervisor_id="1", roles=["55"])),
    EntryCase("numeric-user-ids-in-settings-become-text", "NEW", deal(), entry_tasks(), None,
              rules(supervisor_id=1, roles={"mechanic": 55})),
    EntryCase("deal-without-responsible-gets-its-task-unassigned", "NEW", deal(responsible=None),
              entry_tasks(responsible=None), None),
    EntryCase("stage-without-rules-does-nothing", "WON", deal(), [], "OFFER"),
    # --- mandatory fields, action "task" -----------------------------------------------------------
    EntryCase("missing-field-task-names-the-field-due-in-a-day", "QUALIFY", deal(),
              [task(":missing:task", "Заполнить обязательные поля этапа «Квалификация»: «Бюджет»",
                    NOW + timedelta(days=1), "7", "Квалификация")]),
    EntryCase("field-under-its-crm-id-is-filled", "QUALIFY", deal(**{"901": "50000"}), []),
    EntryCase("field-under-its-bitrix24-name-is-filled", "QUALIFY", deal(UF_CRM_BUDGET="50000|RUB"), []),
    EntryCase("money-with-only-a-currency-is-empty", "QUALIFY", deal(UF_CRM_BUDGET="|RUB"),
              [want("task", ":missing:task")]),
    EntryCase("blank-text-is-empty", "QUALIFY", deal(UF_CRM_BUDGET="  "), [want("task", ":missing:task")]),
    EntryCase("list-of-empty-values-is-empty", "QUALIFY", replace(deal(), fields={"901": ["", None]}),
              [want("task", ":missing:task")]),
    # The first key the deal has wins, even when empty: a deal is keyed one way per CRM.
    EntryCase("first-present-key-wins", "QUALIFY", deal(**{"901": "", "UF_CRM_BUDGET": "5|RUB"}),
              [want("task", ":missing:task")]),
    EntryCase("missing-field-task-comes-before-the-stages-own-tasks", "NEW", deal(responsible=None),
              [task(":missing:task", "Заполнить обязательные поля этапа «Новая»: «Бюджет», «Ответственный»",
                    NOW + timedelta(days=1), None, "Новая"), *entry_tasks(responsible=None)],
              None, rules(with_required("NEW", "task", "budget", "responsible"), supervisor_id="1",
                          roles={"mechanic": "55"})),
    # --- mandatory fields, action "comment" --------------------------------------------------------
    EntryCase("zero-amount-is-missing-and-commented", "OFFER", deal("0"),
              [want("comment", ":missing:comment", crm_deal_id="1001",
                    text="Сделка на этапе «Предложение», но не заполнены обязательные поля: «Сумма сделки».")]),
    EntryCase("no-amount-is-missing", "OFFER", deal(None), [want("comment", ":missing:comment")]),
    EntryCase("negative-amount-is-missing", "OFFER", deal("-5"), [want("comment", ":missing:comment")]),
    # Contact and company are not in the deal DTO: never reported missing.
    EntryCase("positive-amount-passes-contact-and-company-never-checked", "OFFER", deal("0.01"), []),
    # --- mandatory fields, action "revert" ---------------------------------------------------------
    EntryCase("missing-field-reverts-to-the-previous-stage-then-comments", "WAIT", deal(),
              revert_to("QUALIFY", "Квалификация", "WAIT", "Ожидание", "«Следующий контакт»"), "QUALIFY"),
    EntryCase("lost-without-loss-reason-reverts", "LOST", deal(),
              revert_to("OFFER", "Предложение", "LOST", "Отказ", "«Причина отказа»"), "OFFER"),
    EntryCase("lost-with-amocrm-loss-reason-stays", "LOST", deal(loss_reason_id="21403207"), [], "OFFER"),
    EntryCase("lost-with-bitrix24-loss-reason-stays", "LOST", deal(UF_CRM_LOSS_REASON="45"), [], "OFFER"),
    EntryCase("revert-replaces-the-stages-tasks", "NEW", deal(),
              revert_to("QUALIFY", "Квалификация", "NEW", "Новая", "«Бюджет»"), "QUALIFY",
              rules(with_required("NEW", "revert", "budget"))),
    EntryCase("deal-created-in-the-stage-cannot-go-back-comment-only", "WAIT", deal(),
              [cannot_revert("Ожидание", "«Следующий контакт»")], None),
    EntryCase("deal-from-a-stage-funnelsync-does-not-manage-comment-only", "WAIT", deal(),
              [cannot_revert("Ожидание", "«Следующий контакт»")], "QUALIFY",
              FunnelRules(TEMPLATE, "3", {"WAIT": "C3:WAIT"}, STAFFED.field_keys, STAFFED.settings)),
    # Re-entering the same stage must never "revert" into it again: that would be a loop.
    EntryCase("re-entry-of-the-same-stage-does-not-move", "WAIT", deal(),
              [cannot_revert("Ожидание", "«Следующий контакт»")], "WAIT"),
    EntryCase("a-deal-that-cannot-go-back-still-gets-the-stages-tasks", "NEW", deal(),
              [cannot_revert("Новая", "«Бюджет»"), *entry_tasks()], None,
              rules(with_required("NEW", "revert", "budget"), supervisor_id="1", roles={"mechanic": "55"})),
    # --- follow-up on entry ------------------------------------------------------------------------
    EntryCase("filled-follow-up-date-passes-and-queues-the-follow-up", "WAIT", WAIT_FILLED,
              [FOLLOW_UP_TASK], "QUALIFY"),
    EntryCase("follow-up-already-queued-for-this-date-adds-nothing", "WAIT", WAIT_FILLED, [], "QUALIFY",
              previous=PreviousFollowUp(5, FOLLOW_UP_DUE, "Перезвонить")),
    # Filled, so no revert; unreadable, so no follow-up either.
    EntryCase("unreadable-follow-up-date-does-nothing", "WAIT", deal(UF_CRM_NEXT_CONTACT_AT="завтра"), [],
              "QUALIFY"),
]  # fmt: skip


@pytest.mark.parametrize("case", ENTRY_CASES, ids=[c.id for c in ENTRY_CASES])
def test_on_entry(case: EntryCase) -> None:
    effects = on_entry(case.rules, case.deal, case.stage, entry_id=ENTRY, now=NOW,
                       from_stage_code=case.came_from, previous_follow_up=case.previous)  # fmt: skip
    check(effects, case.expect, case.stage)


def test_the_reverts_own_move_is_not_taken_for_a_persons_move() -> None:
    """Revert loop prevention: the rules' move comes back from the CRM as a stage change; the ingest
    suppresses it as our echo unless it is a move a person asked for (rule api_move)."""
    move, _ = on_entry(STAFFED, deal(), "LOST", entry_id=ENTRY, now=NOW, from_stage_code="OFFER")
    assert move.rule == RuleName.REVERT_MOVE and not is_person_move(move.rule)
    assert is_person_move(RuleName.API_MOVE)
    assert not is_person_move(None)  # a move no rule and no person queued


def test_the_same_entry_gives_the_same_keys_and_a_new_entry_new_ones() -> None:
    def keys(entry: int, now: datetime) -> list[str]:
        effects = on_entry(STAFFED, deal(), "NEW", entry_id=entry, now=now, from_stage_code=None)
        return [e.key for e in effects]

    assert keys(ENTRY, NOW) == keys(ENTRY, NOW + timedelta(hours=5))
    assert set(keys(ENTRY, NOW)).isdisjoint(keys(ENTRY + 1, NOW))


# --- follow-up dates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FollowUpCase:
    id: str
    fields: dict[str, Any]
    expect: list[Want]
    previous: PreviousFollowUp | None = None
    stage: str = "WAIT"
    rules: FunnelRules = STAFFED


def queued(
    status: str = "pending", crm_task_id: str | None = None, last: int | None = None
) -> PreviousFollowUp:
    return PreviousFollowUp(5, FOLLOW_UP_DUE, "Перезвонить", status, crm_task_id, last)


MOVED_TEXT = {"UF_CRM_NEXT_CONTACT_AT": MOVED.isoformat()}
FOLLOW_UP_CASES = [
    FollowUpCase("stage-without-follow-up", {"UF_CRM_NEXT_CONTACT_AT": WHEN.isoformat()}, [], stage="OFFER"),
    FollowUpCase("date-not-set", {}, []),
    FollowUpCase("date-cleared-leaves-the-queued-task-alone", {"UF_CRM_NEXT_CONTACT_AT": ""}, [], queued()),
    FollowUpCase("date-unreadable", {"902": "послезавтра"}, []),
    FollowUpCase("date-set-queues-a-task-the-lead-time-before", {"UF_CRM_NEXT_CONTACT_AT": WHEN.isoformat()},
                 [FOLLOW_UP_TASK]),
    FollowUpCase("amocrm-unix-seconds", {"902": str(int(WHEN.timestamp()))}, [FOLLOW_UP_TASK]),
    FollowUpCase("several-values-first-non-empty-wins", {"902": ["", str(int(WHEN.timestamp()))]},
                 [FOLLOW_UP_TASK]),
    FollowUpCase("naive-datetime-is-utc", {"902": "2026-11-26 15:00:00"}, [FOLLOW_UP_TASK]),
    FollowUpCase("offset-datetime", {"902": "2026-11-26T18:00:00+03:00"}, [FOLLOW_UP_TASK]),
    FollowUpCase("role-unassigned-falls-back", {"902": WHEN.isoformat()},
                 [task(f":fu:0:{stamp(FOLLOW_UP_DUE)}", "Перезвонить", FOLLOW_UP_DUE, "7", "Ожидание",
                       NO_SUPERVISOR)], rules=UNSTAFFED),
    FollowUpCase("same-date-seen-again-adds-nothing", {"902": WHEN.isoformat()}, [], queued("done", "901", 5)),
    FollowUpCase("date-changed-while-queued-redates-it-in-the-outbox", MOVED_TEXT,
                 [want("redate", f":fu-redate:5:{stamp(MOVED_DUE)}", command_id=5, due_at=iso(MOVED_DUE))],
                 queued("pending")),
    FollowUpCase("date-changed-after-a-failed-try-redates-it", MOVED_TEXT,
                 [want("redate", f":fu-redate:5:{stamp(MOVED_DUE)}")], queued("failed")),
    FollowUpCase("date-changed-once-in-the-crm-moves-its-deadline", MOVED_TEXT,
                 [want("task_due", f":fu-move:5:{stamp(MOVED_DUE)}", crm_deal_id="1001", task_id="901",
                       due_at=iso(MOVED_DUE), task_command_id=5)], queued("done", "901", 5)),
    FollowUpCase("create-command-without-last-command-keys-on-the-create", MOVED_TEXT,
                 [want("task_due", f":fu-move:5:{stamp(MOVED_DUE)}")], queued("done", "901", None)),
    # Moved once (command 8) already: moving again, even back, is keyed on that move, so it is new.
    FollowUpCase("date-changed-again-after-a-move-keys-on-the-move", {"902": WHEN.isoformat()},
                 [want("task_due", f":fu-move:8:{stamp(FOLLOW_UP_DUE)}", task_command_id=5)],
                 PreviousFollowUp(5, MOVED_DUE, "Перезвонить", "done", "901", 8)),
    FollowUpCase("task-the-crm-refused-is-created-again-for-the-new-date", MOVED_TEXT,
                 [task(f":fu:5:{stamp(MOVED_DUE)}", "Перезвонить", MOVED_DUE, "1", "Ожидание")], queued("dead")),
]  # fmt: skip


@pytest.mark.parametrize("case", FOLLOW_UP_CASES, ids=[c.id for c in FOLLOW_UP_CASES])
def test_follow_up(case: FollowUpCase) -> None:
    effects = follow_up(case.rules, deal(**case.fields), case.stage, entry_id=ENTRY, previous=case.previous)
    check(effects, case.expect, case.stage)


# --- SLA ------------------------------------------------------------------------------------------

ENTERED = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
LATE = ENTERED + timedelta(hours=3)  # past every SLA of NEW below


def overdue(stage: str, within: str, note: str = "") -> str:
    text = f"Сделка «Сделка» находится на этапе «{stage}» дольше {within} (с 23.11.2026 08:00 UTC)."
    return HEADER.format(stage=stage) + "\n" + f"{text} {note}".strip()


def sla_in(within: str) -> FunnelTemplate:
    return edited(lambda d: stage_data(d, "NEW").update(sla={"within": within}))


@dataclass(frozen=True)
class SlaCase:
    id: str
    stage: str
    now: datetime
    expect: Want | None
    rules: FunnelRules = STAFFED
    title: str = "Сделка"


SLA_CASES = [
    SlaCase("stage-without-sla", "QUALIFY", ENTERED + timedelta(days=30), None),
    SlaCase("not-due-yet", "NEW", ENTERED + timedelta(hours=1, minutes=59), None),
    SlaCase("exactly-at-the-deadline-is-not-late", "NEW", ENTERED + timedelta(hours=2), None),
    SlaCase("past-the-deadline-escalates-to-the-supervisor", "NEW", ENTERED + timedelta(hours=2, seconds=1),
            want("task", ":sla", crm_deal_id="1001", title="Просрочен срок этапа «Новая»: Сделка",
                 responsible_id="1", due_at=iso(ENTERED + timedelta(hours=3, seconds=1)),
                 description=overdue("Новая", "2 ч."))),
    SlaCase("no-supervisor-escalates-to-the-responsible-with-a-note", "NEW", LATE,
            want("task", ":sla", responsible_id="7", description=overdue("Новая", "2 ч.", NO_SUPERVISOR)),
            UNSTAFFED),
    SlaCase("escalates-to-a-role", "OFFER", ENTERED + timedelta(days=4),
            want("task", ":sla", responsible_id="55", description=overdue("Предложение", "3 дн."))),
    SlaCase("role-unassigned-escalates-to-the-responsible", "OFFER", ENTERED + timedelta(days=4),
            want("task", ":sla", responsible_id="7", description=overdue("Предложение", "3 дн.", NO_MECHANIC)),
            UNSTAFFED),
    SlaCase("minutes-sla", "NEW", LATE, want("task", ":sla", description=overdue("Новая", "1 мин.")),
            rules(sla_in("90s"), supervisor_id="1")),
    SlaCase("long-deal-title-is-cut-to-250", "NEW", LATE,
            want("task", ":sla", title=("Просрочен срок этапа «Новая»: " + "Я" * 300)[:250]), title="Я" * 300),
]  # fmt: skip


@pytest.mark.parametrize("case", SLA_CASES, ids=[c.id for c in SLA_CASES])
def test_sla_escalation(case: SlaCase) -> None:
    subject = DealState(DEAL_ID, "1001", case.title, Decimal(100), "7", {})
    effect = sla_escalation(case.rules, subject, case.stage, entry_id=ENTRY, entered_at=ENTERED, now=case.now)
    check([effect] if effect else [], [case.expect] if case.expect else [], case.stage)


def test_sla_already_escalated_stay_gets_the_same_key_and_a_new_stay_a_new_one() -> None:
    """One escalation per stay: later checks of the same stay repeat its key (the outbox drops the
    repeat); a new entry into the stage escalates afresh."""

    def key(entry: int, late_by: timedelta) -> str | None:
        effect = sla_escalation(STAFFED, deal(), "NEW", entry_id=entry, entered_at=ENTERED,
                                now=ENTERED + timedelta(hours=2) + late_by)  # fmt: skip
        return effect.key if effect else None

    assert key(ENTRY, timedelta(seconds=1)) == key(ENTRY, timedelta(days=6)) == f"{scope('NEW')}:sla"
    assert key(ENTRY + 1, timedelta(seconds=1)) == f"{scope('NEW', ENTRY + 1)}:sla"


# --- unknown stage --------------------------------------------------------------------------------

UNKNOWN_STAGE_CALLS: list[tuple[str, Callable[[], object]]] = [
    ("on_entry", lambda: on_entry(STAFFED, deal(), "NOPE", entry_id=ENTRY, now=NOW, from_stage_code=None)),
    ("follow_up", lambda: follow_up(STAFFED, deal(), "NOPE", entry_id=ENTRY, previous=None)),
    ("sla", lambda: sla_escalation(STAFFED, deal(), "NOPE", entry_id=ENTRY, entered_at=ENTERED, now=NOW)),
]


@pytest.mark.parametrize("call", [c for _, c in UNKNOWN_STAGE_CALLS], ids=[n for n, _ in UNKNOWN_STAGE_CALLS])
def test_a_stage_the_template_lacks_is_refused(call: Callable[[], object]) -> None:
    """Callers map CRM stages to template codes first (apply_rules skips unmapped stages); a code
    the template lacks is a programming error, not something to guess about."""
    with pytest.raises(KeyError, match="NOPE"):
        call()


# --- field values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "empty"),
    [
        (None, True),
        (False, True),
        ("", True),
        ("   ", True),
        ("|RUB", True),
        ([], True),
        (["", None], True),
        ({}, True),
        ("x", False),
        ("0", False),
        (0, False),
        (True, False),
        (["", "x"], False),
        ({"id": 1}, False),
        ("100|RUB", False),
    ],
    ids=lambda v: repr(v),
)
def test_is_empty(value: Any, empty: bool) -> None:
    assert is_empty(value) is empty


@pytest.mark.parametrize(
    ("code", "subject", "filled"),
    [
        ("amount", deal("1"), True),
        ("amount", deal("0"), False),
        ("amount", deal(None), False),
        ("responsible", deal(), True),
        ("responsible", deal(responsible=""), False),
        ("responsible", deal(responsible=None), False),
        ("contact", deal(), None),
        ("company", deal(), None),
        ("budget", deal(**{"901": "1"}), True),
        ("budget", deal(), False),  # amoCRM leaves empty fields out of the lead
        ("loss_reason", deal(loss_reason_id="7"), True),
        ("source", deal(**{"unrelated": "x"}), False),
    ],
    ids=[
        "amount-positive", "amount-zero", "amount-none", "responsible-set", "responsible-blank",
        "responsible-none", "contact-unknowable", "company-unknowable", "custom-set", "custom-absent",
        "loss-reason-set", "only-other-keys",
    ],
)  # fmt: skip
def test_is_filled(code: str, subject: DealState, filled: bool | None) -> None:
    assert is_filled(STAFFED, subject, code) is filled


PARSED = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("1795420800", PARSED, id="unix-seconds-text"),
        pytest.param(" 1795420800 ", PARSED, id="unix-seconds-text-padded"),
        pytest.param(1795420800, PARSED, id="unix-seconds-int"),
        pytest.param(1795420800.0, PARSED, id="unix-seconds-float"),
        pytest.param(Decimal("1795420800"), PARSED, id="unix-seconds-decimal"),
        pytest.param("2026-11-23T11:00:00+03:00", PARSED, id="iso-with-offset"),
        pytest.param("2026-11-23 08:00:00", PARSED, id="iso-naive-with-space-is-utc"),
        pytest.param("2026-11-23", datetime(2026, 11, 23, tzinfo=UTC), id="bare-date-text"),
        pytest.param(date(2026, 11, 23), datetime(2026, 11, 23, tzinfo=UTC), id="date-object"),
        pytest.param(datetime(2026, 11, 23, 8, 0), PARSED, id="naive-datetime-is-utc"),
        pytest.param(PARSED, PARSED, id="aware-datetime"),
        pytest.param(["", "1795420800"], PARSED, id="list-first-non-empty"),
        pytest.param([], None, id="empty-list"),
        pytest.param(True, None, id="boolean"),
        pytest.param(None, None, id="none"),
        pytest.param("", None, id="blank"),
        pytest.param("завтра", None, id="words"),
        pytest.param("1e400", None, id="text-too-large"),
        pytest.param("99999999999999", None, id="text-out-of-range"),
        pytest.param(99999999999999, None, id="int-out-of-range"),
        # As numbers as well as text: raising would abort the ingest transaction evaluating the rules.
        pytest.param(float("nan"), None, id="float-nan"),
        pytest.param(float("inf"), None, id="float-infinite"),
    ],
)
def test_parse_when(value: Any, expected: datetime | None) -> None:
    assert parse_when(value) == expected


def test_case_tables_are_named_uniquely() -> None:
    for table in (ENTRY_CASES, FOLLOW_UP_CASES, SLA_CASES):
        ids = [c.id for c in table]
        assert len(set(ids)) == len(ids)


def test_builders_state_what_the_tables_assume() -> None:
    """The tables lean on these facts of the small template; fail here, not in fifty rows."""
    assert [s.code for s in TEMPLATE.stages] == ["NEW", "QUALIFY", "OFFER", "WAIT", "WON", "LOST"]
    wait = TEMPLATE.stage("WAIT")
    assert wait.follow_up is not None and wait.follow_up.lead_time == timedelta(hours=1)
