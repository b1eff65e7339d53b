"""The pure automations engine as tables of cases: deal + event or sweep facts + clock -> due actions.

No database, no CRM, no clock: every case gives `now`. Expected effects are written as
`want(automation, occurrence, fire_at)`, which stands for every action of that automation in
template order, each keyed `auto:<deal>:<automation>:<occurrence>:<action index>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from app.automations.engine import (
    AutomationEffect,
    DealFacts,
    Outcome,
    add_months,
    due_now,
    on_closed,
    on_stage_entry,
)
from app.rules.engine import DealState, FunnelRules, stamp
from funnel_templates.schema import FunnelTemplate
from tests.support.small_template import TemplateData, small_template

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
DEAL_ID = 42
ENTRY = 31
STALE = timedelta(days=7)  # the sweep's horizon: older occurrences are history
VISIT = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)  # visit_at "2026-11-25", a bare date
CALL = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)  # next_contact_at


def _text(ru: str, en: str) -> dict[str, str]:
    return {"ru": ru, "en": en}


def _webhook(event: str) -> dict[str, Any]:
    return {"kind": "webhook", "event": event}


AUTOMATIONS: list[dict[str, Any]] = [
    {"code": "greet", "name": _text("Привет", "Hello"), "trigger": {"kind": "stage_entry", "stage": "QUALIFY"},
     "actions": [_webhook("deal.qualify"), {"kind": "task", "title": _text("Позвонить", "Call")}]},
    {"code": "nudge", "name": _text("Напомнить", "Nudge"), "trigger": {"kind": "stalled", "stage": "NEW", "after": "1d"},
     "actions": [{"kind": "notify", "channels": ["sms"], "message": _text("Мы звонили", "We called")}]},
    {"code": "remind", "name": _text("Визит", "Visit"), "only_in_stages": ["OFFER", "WAIT"],
     "trigger": {"kind": "before_date", "field": "visit_at", "offset": "1d"},
     "actions": [{"kind": "move", "stage": "WAIT"}, _webhook("visit.reminder")]},
    {"code": "check_in", "name": _text("Звонок", "Call"), "trigger": {"kind": "after_date", "field": "next_contact_at",
     "offset": "2h"}, "actions": [_webhook("call.check_in")]},
    {"code": "thanks", "name": _text("Спасибо", "Thanks"), "trigger": {"kind": "won"},
     "actions": [{"kind": "notify", "channels": ["email"], "subject": _text("Спасибо", "Thanks"),
                  "message": _text("Спасибо, {contact.name}", "Thank you, {contact.name}")}]},
    {"code": "win_back", "name": _text("Возврат", "Win-back"),
     "trigger": {"kind": "lost", "delay": "90d", "reasons": ["price"]},
     "actions": [{"kind": "create_deal", "funnel": "test.small", "stage": "NEW",
                  "title": _text("Возврат: {deal.title}", "Win-back: {deal.title}")}]},
    {"code": "lost_any", "name": _text("Отказ", "Lost"), "trigger": {"kind": "lost"}, "actions": [_webhook("deal.lost")]},
    {"code": "monthly", "name": _text("Поставка", "Supply"), "trigger": {"kind": "recurring", "every_months": 1},
     "actions": [{"kind": "create_deal", "funnel": "test.small", "title": _text("Ещё: {deal.title}", "More: {deal.title}")}]},
    {"code": "quarterly", "name": _text("Квартал", "Quarter"), "trigger": {"kind": "recurring", "every_months": 3},
     "actions": [_webhook("deal.quarter")]},
    # Its own stage is outside only_in_stages: it can never fire.
    {"code": "never", "name": _text("Никогда", "Never"), "only_in_stages": ["WAIT"],
     "trigger": {"kind": "stage_entry", "stage": "OFFER"}, "actions": [_webhook("deal.never")]},
]  # fmt: skip


def _with_automations(data: TemplateData) -> None:
    data["fields"].append({"code": "visit_at", "name": _text("Визит", "Visit"), "type": "date"})
    data["automations"] = AUTOMATIONS


TEMPLATE: FunnelTemplate = small_template(_with_automations)


def rules(template: FunnelTemplate = TEMPLATE) -> FunnelRules:
    return FunnelRules(
        template=template,
        pipeline_id="3",
        stage_ids={s.code: f"C3:{s.code}" for s in template.stages},
        field_keys={
            "visit_at": ["904", "UF_CRM_VISIT_AT"],
            "next_contact_at": ["902", "UF_CRM_NEXT_CONTACT_AT"],
        },
    )


RULES = rules()


def deal(deal_id: int = DEAL_ID, **fields: Any) -> DealState:
    return DealState(deal_id, "1001", "Сделка", Decimal("100"), "7", fields)


@dataclass(frozen=True)
class Want:
    automation: str
    occurrence: str
    fire_at: datetime
    entry_id: int | None = None


def want(automation: str, occurrence: str, fire_at: datetime, entry_id: int | None = None) -> Want:
    return Want(automation, occurrence, fire_at, entry_id)


def check(effects: list[AutomationEffect], wanted: list[Want], deal_id: int = DEAL_ID) -> None:
    expected = []
    for w in wanted:
        spec = next(a for a in TEMPLATE.automations if a.code == w.automation)
        for index, action in enumerate(spec.actions):
            key = f"auto:{deal_id}:{w.automation}:{w.occurrence}:{index}"
            expected.append((w.automation, index, action, w.fire_at, w.occurrence, key, w.entry_id))
    got = [
        (e.automation, e.action_index, e.action, e.fire_at, e.occurrence, e.key, e.entry_id) for e in effects
    ]
    assert got == expected


# --- stage entry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryCase:
    id: str
    stage: str
    expect: list[Want]
    entered_at: datetime | None = None


ENTRY_CASES = [
    EntryCase("stage-entry-fires-every-action-now", "QUALIFY", [want("greet", "#31", NOW, ENTRY)]),
    EntryCase("entry-schedules-the-stalled-nudge-a-day-later", "NEW",
              [want("nudge", "#31", NOW + timedelta(days=1), ENTRY)]),
    EntryCase("stalled-counts-from-the-entrys-own-time", "NEW",
              [want("nudge", "#31", NOW + timedelta(hours=23), ENTRY)], NOW - timedelta(hours=1)),
    EntryCase("only-in-stages-filters-by-the-stage-entered", "OFFER", []),
    EntryCase("stage-without-automations-does-nothing", "WAIT", []),
    # Date, closing and recurring automations are not stage entries.
    EntryCase("won-stage-entry-is-not-a-closing", "WON", []),
]  # fmt: skip


@pytest.mark.parametrize("case", ENTRY_CASES, ids=[c.id for c in ENTRY_CASES])
def test_on_stage_entry(case: EntryCase) -> None:
    effects = on_stage_entry(RULES, deal(), case.stage, entry_id=ENTRY, now=NOW, entered_at=case.entered_at)
    check(effects, case.expect)


# --- closing --------------------------------------------------------------------------------------

CLOSED = NOW - timedelta(minutes=5)  # the CRM's closing time, a little before we process it
WON_AT = f"won@{stamp(CLOSED)}"
LOST_AT = f"lost@{stamp(CLOSED)}"


@dataclass(frozen=True)
class ClosedCase:
    id: str
    outcome: Outcome
    reason: str | None
    expect: list[Want]
    stage: str = "LOST"


CLOSED_CASES = [
    ClosedCase("won-without-delay-fires-now", "won", None, [want("thanks", WON_AT, NOW)], "WON"),
    ClosedCase("lost-for-a-listed-reason-fires-now-and-schedules-the-win-back", "lost", "price",
               [want("win_back", LOST_AT, CLOSED + timedelta(days=90)), want("lost_any", LOST_AT, NOW)]),
    ClosedCase("lost-for-another-reason-skips-the-win-back", "lost", "spam", [want("lost_any", LOST_AT, NOW)]),
    ClosedCase("lost-without-a-reason-skips-the-reasoned-automation", "lost", None,
               [want("lost_any", LOST_AT, NOW)]),
]  # fmt: skip


@pytest.mark.parametrize("case", CLOSED_CASES, ids=[c.id for c in CLOSED_CASES])
def test_on_closed(case: ClosedCase) -> None:
    effects = on_closed(RULES, deal(), case.outcome, closed_at=CLOSED, loss_reason_code=case.reason,
                        stage_code=case.stage, now=NOW)  # fmt: skip
    check(effects, case.expect)


def test_only_in_stages_applies_to_closing_automations() -> None:
    def edit(data: TemplateData) -> None:
        _with_automations(data)
        data["automations"] = [dict(a, only_in_stages=["WAIT"]) if a["code"] == "lost_any" else a
                               for a in data["automations"]]  # fmt: skip

    effects = on_closed(rules(small_template(edit)), deal(), "lost", closed_at=CLOSED, loss_reason_code="spam",
                        stage_code="LOST", now=NOW)  # fmt: skip
    assert effects == []


# --- the sweep ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepCase:
    id: str
    facts: DealFacts
    expect: list[Want]
    fields: dict[str, Any] = field(default_factory=dict)
    now: datetime = NOW


def facts(stage: str = "OFFER", entered: datetime = NOW - timedelta(hours=1), **closing: Any) -> DealFacts:
    return DealFacts(stage_code=stage, entered_at=entered, entry_id=ENTRY, **closing)


def day(year: int, month: int, dd: int) -> datetime:
    return datetime(year, month, dd, 12, 0, tzinfo=UTC)


VISIT_FIELD = {"UF_CRM_VISIT_AT": "2026-11-25"}
REMIND_AT = VISIT - timedelta(days=1)  # 2026-11-24 00:00 UTC
ON_VISIT = f"d{stamp(VISIT)}"
CHECK_AT = CALL + timedelta(hours=2)
ON_CALL = f"d{stamp(CALL)}"
JAN31 = day(2026, 1, 31)

SWEEP_CASES = [
    # --- stalled -----------------------------------------------------------------------------------
    SweepCase("stalled-exactly-after-fires", facts("NEW", NOW - timedelta(days=1)),
              [want("nudge", "#31", NOW, ENTRY)]),
    SweepCase("stalled-not-yet", facts("NEW", NOW - timedelta(hours=23)), []),
    SweepCase("stalled-in-another-stage-does-nothing", facts("QUALIFY", NOW - timedelta(days=2)), []),
    SweepCase("stalled-long-ago-is-history", facts("NEW", NOW - timedelta(days=9)), []),
    SweepCase("stalled-at-the-horizon-still-fires", facts("NEW", NOW - timedelta(days=8)),
              [want("nudge", "#31", NOW - STALE, ENTRY)]),
    # --- before_date -------------------------------------------------------------------------------
    SweepCase("before-date-fires-once-the-offset-is-reached", facts(), [want("remind", ON_VISIT, REMIND_AT)],
              VISIT_FIELD, REMIND_AT),
    SweepCase("before-date-not-yet", facts(), [], VISIT_FIELD, REMIND_AT - timedelta(seconds=1)),
    SweepCase("before-date-still-due-a-little-later", facts("WAIT"), [want("remind", ON_VISIT, REMIND_AT)],
              VISIT_FIELD, REMIND_AT + timedelta(days=2)),
    SweepCase("before-date-outside-only-in-stages", facts("QUALIFY"), [], VISIT_FIELD, REMIND_AT),
    SweepCase("before-date-without-a-value", facts(), [], {}, REMIND_AT),
    SweepCase("before-date-with-an-empty-value", facts(), [], {"UF_CRM_VISIT_AT": ""}, REMIND_AT),
    SweepCase("before-date-unreadable-value", facts(), [], {"UF_CRM_VISIT_AT": "завтра"}, REMIND_AT),
    SweepCase("before-date-history-is-not-replayed", facts(), [], VISIT_FIELD, REMIND_AT + STALE + timedelta(seconds=1)),
    SweepCase("before-date-amocrm-unix-seconds", facts(), [want("remind", ON_VISIT, REMIND_AT)],
              {"904": str(int(VISIT.timestamp()))}, REMIND_AT),
    # --- after_date --------------------------------------------------------------------------------
    SweepCase("after-date-fires-after-the-offset", facts("QUALIFY"), [want("check_in", ON_CALL, CHECK_AT)],
              {"902": CALL.isoformat()}, CHECK_AT),
    SweepCase("after-date-not-yet", facts("QUALIFY"), [], {"902": CALL.isoformat()}, CHECK_AT - timedelta(minutes=1)),
    # --- won / lost --------------------------------------------------------------------------------
    SweepCase("won-recently-is-due", facts("WON", won_at=NOW - timedelta(days=1)),
              [want("thanks", f"won@{stamp(NOW - timedelta(days=1))}", NOW - timedelta(days=1))]),
    SweepCase("won-long-ago-is-history", facts("WON", won_at=NOW - timedelta(days=8)), []),
    SweepCase("lost-for-a-listed-reason-win-back-after-90-days",
              facts("LOST", lost_at=NOW - timedelta(days=90), loss_reason_code="price"),
              [want("win_back", f"lost@{stamp(NOW - timedelta(days=90))}", NOW)]),
    SweepCase("lost-for-another-reason-no-win-back",
              facts("LOST", lost_at=NOW - timedelta(days=90), loss_reason_code="spam"), []),
    SweepCase("lost-89-days-ago-no-win-back-yet",
              facts("LOST", lost_at=NOW - timedelta(days=89), loss_reason_code="price"), []),
    # --- recurring ---------------------------------------------------------------------------------
    SweepCase("recurring-jan-31-first-month-is-feb-28", facts("WON", won_at=JAN31),
              [want("monthly", "r1", day(2026, 2, 28))], now=day(2026, 2, 28)),
    SweepCase("recurring-not-before-the-first-month", facts("WON", won_at=JAN31), [],
              now=day(2026, 2, 28) - timedelta(seconds=1)),
    SweepCase("recurring-second-month-goes-back-to-the-31st", facts("WON", won_at=JAN31),
              [want("monthly", "r2", day(2026, 3, 31))], now=day(2026, 4, 2)),
    SweepCase("recurring-leap-year-feb-29", facts("WON", won_at=day(2028, 1, 31)),
              [want("monthly", "r1", day(2028, 2, 29))], now=day(2028, 2, 29)),
    SweepCase("recurring-every-3-months-clamps-to-apr-30", facts("WON", won_at=JAN31),
              [want("monthly", "r3", day(2026, 4, 30)), want("quarterly", "r1", day(2026, 4, 30))],
              now=day(2026, 4, 30)),
    SweepCase("recurring-only-the-latest-occurrence-years-later", facts("WON", won_at=JAN31),
              [want("monthly", "r36", day(2029, 1, 31)), want("quarterly", "r12", day(2029, 1, 31))],
              now=day(2029, 2, 1)),
    SweepCase("recurring-missed-occurrence-is-history", facts("WON", won_at=JAN31), [], now=day(2026, 3, 15)),
    SweepCase("recurring-needs-a-won-deal", facts("LOST", lost_at=JAN31, loss_reason_code="spam"), [],
              now=day(2026, 2, 28)),
    # --- stage entries are events, never swept ---------------------------------------------------
    SweepCase("stage-entry-automation-is-not-swept", facts("QUALIFY", NOW - timedelta(days=1)), []),
]  # fmt: skip


@pytest.mark.parametrize("case", SWEEP_CASES, ids=[c.id for c in SWEEP_CASES])
def test_due_now(case: SweepCase) -> None:
    effects = due_now(RULES, deal(**case.fields), case.facts, case.now, stale_after=STALE)
    check(effects, case.expect)


# --- idempotency: both paths, re-evaluation and new occurrences ---------------------------------


def test_key_shape() -> None:
    [effect, _] = on_stage_entry(RULES, deal(), "QUALIFY", entry_id=ENTRY, now=NOW)
    assert effect.key == "auto:42:greet:#31:0"


def test_the_scheduled_stall_and_the_sweep_share_a_key_a_new_entry_does_not() -> None:
    [scheduled] = on_stage_entry(RULES, deal(), "NEW", entry_id=ENTRY, now=NOW)
    [swept] = due_now(RULES, deal(), facts("NEW", NOW), NOW + timedelta(days=1), stale_after=STALE)
    assert (swept.key, swept.fire_at) == (scheduled.key, scheduled.fire_at)
    [re_entered] = on_stage_entry(RULES, deal(), "NEW", entry_id=ENTRY + 1, now=NOW)
    assert re_entered.key != scheduled.key


def test_the_delayed_closing_and_the_sweep_share_a_key() -> None:
    closed = on_closed(
        RULES, deal(), "lost", closed_at=CLOSED, loss_reason_code="price", stage_code="LOST", now=NOW
    )
    later = CLOSED + timedelta(days=90)
    swept = due_now(
        RULES, deal(), facts("LOST", lost_at=CLOSED, loss_reason_code="price"), later, stale_after=STALE
    )
    assert {(e.key, e.fire_at) for e in swept} <= {(e.key, e.fire_at) for e in closed}
    assert [e.automation for e in swept] == ["win_back"]


def _remind_keys(value: Any, now: datetime = REMIND_AT) -> list[str]:
    effects = due_now(RULES, deal(UF_CRM_VISIT_AT=value), facts(), now, stale_after=STALE)
    return [e.key for e in effects]


def test_the_same_date_seen_again_is_the_same_occurrence() -> None:
    keys = _remind_keys("2026-11-25")
    assert keys and keys == _remind_keys("2026-11-25", REMIND_AT + timedelta(hours=5))
    assert keys == _remind_keys("2026-11-25T03:00:00+03:00")  # the same instant written otherwise


def test_a_changed_date_is_a_new_occurrence() -> None:
    moved = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
    keys = _remind_keys(moved.isoformat(), moved - timedelta(days=1))
    assert keys and set(keys).isdisjoint(_remind_keys("2026-11-25"))


def test_keys_differ_between_deals() -> None:
    [first, _] = on_stage_entry(RULES, deal(1), "QUALIFY", entry_id=ENTRY, now=NOW)
    [second, _] = on_stage_entry(RULES, deal(2), "QUALIFY", entry_id=ENTRY, now=NOW)
    assert first.key != second.key


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (datetime(2026, 1, 31, 9, 30, tzinfo=UTC), 1, datetime(2026, 2, 28, 9, 30, tzinfo=UTC)),
        (datetime(2028, 1, 31, tzinfo=UTC), 1, datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2026, 1, 31, tzinfo=UTC), 2, datetime(2026, 3, 31, tzinfo=UTC)),
        (datetime(2026, 11, 30, tzinfo=UTC), 3, datetime(2027, 2, 28, tzinfo=UTC)),
        (datetime(2026, 12, 15, tzinfo=UTC), 1, datetime(2027, 1, 15, tzinfo=UTC)),
        (datetime(2026, 5, 31, tzinfo=UTC), 12, datetime(2027, 5, 31, tzinfo=UTC)),
    ],
    ids=["jan31-feb28", "leap-feb29", "two-months-back-to-31", "over-new-year-clamped", "december", "a-year"],
)
def test_add_months(start: datetime, months: int, expected: datetime) -> None:
    assert add_months(start, months) == expected


def test_case_tables_are_named_uniquely() -> None:
    for table in (ENTRY_CASES, CLOSED_CASES, SWEEP_CASES):
        ids = [c.id for c in table]
        assert len(set(ids)) == len(ids)
