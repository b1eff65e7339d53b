"""Pure automations engine: which of a template's automation actions are due for a deal, and when.

No database, no clock, no CRM: callers pass the deal, what they know of its stage and closing, and
`now`. Two entry points mirror how the service learns things:

- events (`on_stage_entry`, `on_closed`): what fires now, plus what the event schedules for later
  (a stalled nudge, a delayed won/lost action), to be queued with its `fire_at`;
- a periodic sweep (`due_now`): everything whose time has come, including dates in deal fields and
  recurrences, which no event announces.

Both paths give the same idempotency key for the same occurrence, so the outbox drops the repeat
whichever path queues it first. A key is `auto:<deal>:<automation>:<occurrence>:<action index>`; the
occurrence says which firing it is (the stage entry, the date value, the closing, the k-th
recurrence), so evaluating again yields the same keys and a new occurrence yields new ones.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from app.rules.engine import DealState, FunnelRules, field_value, parse_when, stamp
from funnel_templates.automations import (
    Action,
    AfterDateTrigger,
    AutomationSpec,
    BeforeDateTrigger,
    LostTrigger,
    RecurringTrigger,
    StageEntryTrigger,
    StalledTrigger,
    WonTrigger,
)

Outcome = Literal["won", "lost"]
KEY_PREFIX = "auto:"  # the rules engine's keys start "rules:"


@dataclass(frozen=True)
class AutomationEffect:
    """One action of one automation, due at `fire_at` (now or later)."""

    automation: str  # the automation's code
    action_index: int
    action: Action
    fire_at: datetime
    occurrence: str  # which firing of the automation this is (part of the key)
    key: str
    # The stage entry (StageTransition id) a stage_entry/stalled effect belongs to: one scheduled
    # for later is void once the deal has left that entry.
    entry_id: int | None = None


@dataclass(frozen=True)
class DealFacts:
    """What the sweep knows about a deal besides its fields."""

    stage_code: str  # the deal's current stage
    entered_at: datetime  # when it entered that stage
    entry_id: int  # the StageTransition of that entry
    won_at: datetime | None = None  # set only while the deal is won
    lost_at: datetime | None = None  # set only while the deal is lost
    loss_reason_code: str | None = None  # the template's loss reason code, not the CRM's id


def automation_key(deal_id: int, automation: str, occurrence: str, action_index: int) -> str:
    return f"{KEY_PREFIX}{deal_id}:{automation}:{occurrence}:{action_index}"


def entry_occurrence(entry_id: int) -> str:
    return f"#{entry_id}"


def date_occurrence(value: datetime) -> str:
    return f"d{stamp(value)}"


def closed_occurrence(outcome: Outcome, closed_at: datetime) -> str:
    return f"{outcome}@{stamp(closed_at)}"


def recurrence_occurrence(k: int) -> str:
    return f"r{k}"


def effects_of(
    deal: DealState,
    automation: AutomationSpec,
    occurrence: str,
    fire_at: datetime,
    entry_id: int | None = None,
) -> list[AutomationEffect]:
    """Every action of `automation` for one occurrence, in template order."""
    return [
        AutomationEffect(
            automation=automation.code,
            action_index=index,
            action=action,
            fire_at=fire_at,
            occurrence=occurrence,
            key=automation_key(deal.id, automation.code, occurrence, index),
            entry_id=entry_id,
        )
        for index, action in enumerate(automation.actions)
    ]


def allowed_in(automation: AutomationSpec, stage_code: str) -> bool:
    return automation.only_in_stages is None or stage_code in automation.only_in_stages


def _active(rules: FunnelRules, stage_code: str) -> Iterator[AutomationSpec]:
    """The template's automations that may fire while the deal is in `stage_code`."""
    return (a for a in rules.template.automations if allowed_in(a, stage_code))


# --- events ---------------------------------------------------------------------------------------


def on_stage_entry(
    rules: FunnelRules,
    deal: DealState,
    stage_code: str,
    *,
    entry_id: int,
    now: datetime,
    entered_at: datetime | None = None,
) -> list[AutomationEffect]:
    """Effects of the deal entering `stage_code`: its stage_entry automations (due now) and its
    stalled ones (due `after` the entry, while the deal stays in this entry). `entered_at` is the
    entry's own time when known; it defaults to `now`."""
    entered = entered_at or now
    occurrence = entry_occurrence(entry_id)
    effects: list[AutomationEffect] = []
    for automation in _active(rules, stage_code):
        trigger = automation.trigger
        if isinstance(trigger, StageEntryTrigger) and trigger.stage == stage_code:
            effects += effects_of(deal, automation, occurrence, now, entry_id)
        elif isinstance(trigger, StalledTrigger) and trigger.stage == stage_code:
            effects += effects_of(deal, automation, occurrence, entered + trigger.after, entry_id)
    return effects


def fires_on_closing(
    automation: AutomationSpec, outcome: Outcome, loss_reason_code: str | None
) -> timedelta | None:
    """The delay after closing when `automation` fires for this outcome, or None when it does not
    (another outcome, or a loss reason outside the trigger's `reasons`)."""
    trigger = automation.trigger
    if outcome == "won" and isinstance(trigger, WonTrigger):
        return trigger.delay
    if outcome == "lost" and isinstance(trigger, LostTrigger):
        if trigger.reasons is not None and loss_reason_code not in trigger.reasons:
            return None
        return trigger.delay
    return None


def on_closed(
    rules: FunnelRules,
    deal: DealState,
    outcome: Outcome,
    *,
    closed_at: datetime,
    loss_reason_code: str | None,
    stage_code: str,
    now: datetime,
) -> list[AutomationEffect]:
    """Effects of the deal being won or lost (into `stage_code`): without a delay due now, with one
    due `delay` after `closed_at`."""
    occurrence = closed_occurrence(outcome, closed_at)
    effects: list[AutomationEffect] = []
    for automation in _active(rules, stage_code):
        delay = fires_on_closing(automation, outcome, loss_reason_code)
        if delay is not None:
            fire_at = closed_at + delay if delay else now
            effects += effects_of(deal, automation, occurrence, fire_at)
    return effects


# --- the sweep ------------------------------------------------------------------------------------


def due_now(
    rules: FunnelRules,
    deal: DealState,
    facts: DealFacts,
    now: datetime,
    *,
    stale_after: timedelta,
) -> list[AutomationEffect]:
    """Every effect whose time has come: `fire_at` at or before `now`, and not more than
    `stale_after` before it. Older occurrences are history, not replayed (a sweep that was down, an
    automation added to old deals, a date field set in the past)."""
    effects: list[AutomationEffect] = []
    for automation in _active(rules, facts.stage_code):
        timing = occurrence_due(rules, deal, facts, automation, now)
        if timing is None:
            continue
        occurrence, fire_at = timing
        if fire_at <= now and now - fire_at <= stale_after:
            entry_id = facts.entry_id if isinstance(automation.trigger, StalledTrigger) else None
            effects += effects_of(deal, automation, occurrence, fire_at, entry_id)
    return effects


def occurrence_due(
    rules: FunnelRules, deal: DealState, facts: DealFacts, automation: AutomationSpec, now: datetime
) -> tuple[str, datetime] | None:
    """The automation's latest occurrence at `now` and when it fires, or None when it has none.
    Stage entries are events only: the sweep never fires a stage_entry automation."""
    trigger = automation.trigger
    if isinstance(trigger, StalledTrigger):
        if trigger.stage != facts.stage_code:
            return None
        return entry_occurrence(facts.entry_id), facts.entered_at + trigger.after
    if isinstance(trigger, BeforeDateTrigger | AfterDateTrigger):
        when = parse_when(field_value(rules, deal, trigger.field))
        if when is None:
            return None
        sign = -1 if isinstance(trigger, BeforeDateTrigger) else 1
        return date_occurrence(when), when + sign * trigger.offset
    if isinstance(trigger, RecurringTrigger):
        return _latest_recurrence(trigger, facts.won_at, now)
    return _closing_due(automation, facts)


def _closing_due(automation: AutomationSpec, facts: DealFacts) -> tuple[str, datetime] | None:
    """A won/lost automation's occurrence for the deal's closing, if it is closed that way."""
    closings: tuple[tuple[Outcome, datetime | None], ...] = (("won", facts.won_at), ("lost", facts.lost_at))
    for outcome, closed_at in closings:
        if closed_at is None:
            continue
        delay = fires_on_closing(automation, outcome, facts.loss_reason_code)
        if delay is not None:
            return closed_occurrence(outcome, closed_at), closed_at + delay
    return None


def _latest_recurrence(
    trigger: RecurringTrigger, won_at: datetime | None, now: datetime
) -> tuple[str, datetime] | None:
    """The last recurrence at or before `now` (k >= 1), or None before the first. Only the last:
    earlier ones are past (the sweep saw them, or they are history)."""
    if won_at is None:
        return None
    months_since = (now.year - won_at.year) * 12 + (now.month - won_at.month)
    k = months_since // trigger.every_months
    while k >= 1 and add_months(won_at, k * trigger.every_months) > now:
        k -= 1
    if k < 1:
        return None
    return recurrence_occurrence(k), add_months(won_at, k * trigger.every_months)


def add_months(at: datetime, months: int) -> datetime:
    """Calendar months later, the day clamped to the month's end (Jan 31 + 1 month = Feb 28/29).
    Counted from the original date each time, so the 31st comes back after a short month."""
    index = at.month - 1 + months
    year, month = at.year + index // 12, index % 12 + 1
    day = min(at.day, calendar.monthrange(year, month)[1])
    return at.replace(year=year, month=month, day=day)
