"""The automations encoded in the library templates evaluate: each fires in the situation it names.

Named cases pin the articles' promises (a visit reminder the day before, a renewal offer two weeks
ahead, a monthly repeat supply, a win-back three months after a loss); the sweep over the whole
library proves every encoded automation fires somewhere, so none is dead configuration.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from app.automations.engine import AutomationEffect, DealFacts, due_now, on_closed, on_stage_entry
from app.rules.engine import DealState, FunnelRules, stamp
from funnel_templates.automations import (
    AfterDateTrigger,
    AutomationSpec,
    BeforeDateTrigger,
    LostTrigger,
    RecurringTrigger,
    StageEntryTrigger,
    StalledTrigger,
    WonTrigger,
)
from funnel_templates.loader import library
from funnel_templates.schema import FunnelTemplate

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
STALE = timedelta(days=1)
ENTRY = 7


def rules(key: str) -> FunnelRules:
    template = library()[key]
    return FunnelRules(
        template=template,
        pipeline_id="1",
        stage_ids={s.code: s.code for s in template.stages},
        field_keys={f.code: [f.code] for f in template.fields},
    )


def deal(**fields: Any) -> DealState:
    return DealState(5, "500", "Клиент", Decimal("1000"), "3", fields)


def facts(stage: str, **closing: Any) -> DealFacts:
    return DealFacts(stage_code=stage, entered_at=NOW - timedelta(hours=1), entry_id=ENTRY, **closing)


def summary(effects: list[AutomationEffect]) -> list[tuple[str, str, str, datetime]]:
    return [(e.automation, e.action.kind, e.key, e.fire_at) for e in effects]


def test_medical_visit_reminder_the_day_before_the_visit() -> None:
    visit = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    ruled, subject = rules("medical.new_clients"), deal(visit_at=visit.isoformat())
    occurrence = f"visit_reminder:d{stamp(visit)}"
    day_before = visit - timedelta(days=1)
    effects = due_now(ruled, subject, facts("BOOKING"), day_before, stale_after=STALE)
    assert summary(effects) == [
        ("visit_reminder", "move", f"auto:5:{occurrence}:0", day_before),
        ("visit_reminder", "notify", f"auto:5:{occurrence}:1", day_before),
    ]
    assert (
        due_now(ruled, subject, facts("BOOKING"), day_before - timedelta(minutes=1), stale_after=STALE) == []
    )
    # Once moved to the reminder stage the sweep sees the same occurrence again: same keys, no repeat.
    again = due_now(
        ruled, subject, facts("VISIT_REMINDER"), day_before + timedelta(hours=1), stale_after=STALE
    )
    assert [e.key for e in again] == [e.key for e in effects]
    assert due_now(ruled, subject, facts("DOCTOR_VISIT"), day_before, stale_after=STALE) == []


def test_sports_renewal_offer_14_days_before_the_membership_ends() -> None:
    ruled, subject = rules("sports.renewals"), deal(membership_ends_at="2026-12-07")
    offer_at = datetime(2026, 11, 23, tzinfo=UTC)
    effects = due_now(ruled, subject, facts("EXPIRY_TRACKING"), offer_at, stale_after=STALE)
    assert [(e.automation, e.action.kind, e.fire_at) for e in effects] == [
        ("renewal_offer", "move", offer_at),
        ("renewal_offer", "notify", offer_at),
    ]
    assert (
        due_now(ruled, subject, facts("EXPIRY_TRACKING"), offer_at - timedelta(seconds=1), stale_after=STALE)
        == []
    )


def test_wholesale_repeat_supply_every_month_after_won() -> None:
    ruled, won_at = rules("wholesale.regular_supplies"), datetime(2026, 1, 31, 8, 0, tzinfo=UTC)
    won = facts("WON", won_at=won_at)
    months = [datetime(2026, m, d, 8, 0, tzinfo=UTC) for m, d in ((2, 28), (3, 31), (4, 30))]
    occurrences = []
    for k, at in enumerate(months, start=1):
        [effect] = due_now(ruled, deal(), won, at, stale_after=STALE)
        assert (effect.automation, effect.action.kind, effect.occurrence) == (
            "repeat_supply_deal",
            "create_deal",
            f"r{k}",
        )
        occurrences.append(effect.key)
    assert len(set(occurrences)) == len(months)


def test_new_sales_win_back_deal_90_days_after_a_loss_to_a_competitor() -> None:
    ruled, lost_at = rules("base.new_sales"), NOW - timedelta(minutes=1)
    [scheduled] = on_closed(ruled, deal(), "lost", closed_at=lost_at, loss_reason_code="bought_elsewhere",
                            stage_code="LOST", now=NOW)  # fmt: skip
    assert (scheduled.automation, scheduled.fire_at) == (
        "win_back_after_3_months",
        lost_at + timedelta(days=90),
    )
    assert scheduled.action.kind == "create_deal" and scheduled.action.funnel == "base.win_back"
    assert (
        on_closed(
            ruled, deal(), "lost", closed_at=lost_at, loss_reason_code="spam", stage_code="LOST", now=NOW
        )
        == []
    )


def test_by_goal_qualification_moves_an_unanswered_request_after_a_day() -> None:
    [scheduled] = on_stage_entry(
        rules("by_goal.qualification"), deal(), "NEW_REQUEST", entry_id=ENTRY, now=NOW
    )
    assert (scheduled.automation, scheduled.fire_at, scheduled.entry_id) == (
        "no_answer_to_no_contact",
        NOW + timedelta(days=1),
        ENTRY,
    )


# --- every encoded automation fires in the situation it describes -------------------------------


def _library_automations() -> list[tuple[str, AutomationSpec]]:
    return [(key, a) for key, t in sorted(library().items()) for a in t.automations]


def _stage_for(template: FunnelTemplate, automation: AutomationSpec, semantics: str) -> str:
    if automation.only_in_stages:
        return automation.only_in_stages[0]
    return next(s.code for s in template.stages if s.semantics == semantics)


def _fire(key: str, automation: AutomationSpec) -> list[AutomationEffect]:
    """Evaluate the engine in the situation `automation`'s trigger describes."""
    ruled, trigger = rules(key), automation.trigger
    if isinstance(trigger, StageEntryTrigger):
        return on_stage_entry(ruled, deal(), trigger.stage, entry_id=ENTRY, now=NOW)
    if isinstance(trigger, StalledTrigger):
        stalled = DealFacts(trigger.stage, NOW - trigger.after, ENTRY)
        return due_now(ruled, deal(), stalled, NOW, stale_after=STALE)
    if isinstance(trigger, BeforeDateTrigger | AfterDateTrigger):
        sign = 1 if isinstance(trigger, BeforeDateTrigger) else -1
        when = NOW + sign * trigger.offset
        stage = _stage_for(ruled.template, automation, "process")
        return due_now(ruled, deal(**{trigger.field: when.isoformat()}), facts(stage), NOW, stale_after=STALE)
    if isinstance(trigger, RecurringTrigger):
        won = facts(_stage_for(ruled.template, automation, "success"), won_at=NOW - timedelta(days=400))
        return due_now(ruled, deal(), won, NOW + timedelta(days=31), stale_after=timedelta(days=31))
    assert isinstance(trigger, WonTrigger | LostTrigger)
    reason = trigger.reasons[0] if isinstance(trigger, LostTrigger) and trigger.reasons else None
    stage = _stage_for(ruled.template, automation, "success" if trigger.kind == "won" else "failure")
    return on_closed(
        ruled, deal(), trigger.kind, closed_at=NOW, loss_reason_code=reason, stage_code=stage, now=NOW
    )


@pytest.mark.parametrize(("key", "automation"), _library_automations(),
                         ids=[f"{k}:{a.code}" for k, a in _library_automations()])  # fmt: skip
def test_every_library_automation_fires(key: str, automation: AutomationSpec) -> None:
    mine = [e for e in _fire(key, automation) if e.automation == automation.code]
    assert [e.action_index for e in mine] == list(range(len(automation.actions)))
    assert all(e.key.startswith(f"auto:5:{automation.code}:") for e in mine)


def test_the_library_has_every_trigger_kind_the_engine_knows() -> None:
    kinds = {a.trigger.kind for _, a in _library_automations()}
    assert {"stage_entry", "stalled", "before_date", "after_date", "lost", "recurring"} <= kinds
