"""Automations in a funnel template: a trigger and the actions it runs, plus the Telegram bot's
qualification questions.

This module is the template side only (shape, cross-references, display). Firing triggers, sending
messages and calling webhooks belong to the rules engine and the outbox.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator

from funnel_templates.basics import (
    BUILTIN_ROLES,
    Duration,
    LocalizedText,
    StrictModel,
    TaskFields,
    TemplateRuleError,
    collect,
    duplicates,
    format_duration,
    raise_all,
)
from funnel_templates.placeholders import unknown_placeholders

if TYPE_CHECKING:
    from funnel_templates.schema import FieldSpec, FunnelTemplate

AUTOMATION_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
WEBHOOK_EVENT_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
Channel = Literal["telegram", "sms", "email"]


# --- triggers ---------------------------------------------------------------------------------


class StageEntryTrigger(StrictModel):
    kind: Literal["stage_entry"]
    stage: str


class StalledTrigger(StrictModel):
    """The deal entered `stage` and has not moved on `after` later."""

    kind: Literal["stalled"]
    stage: str
    after: Duration


class BeforeDateTrigger(StrictModel):
    """`offset` before the moment a date/datetime field holds (e.g. the day before a visit)."""

    kind: Literal["before_date"]
    field: str
    offset: Duration


class AfterDateTrigger(StrictModel):
    kind: Literal["after_date"]
    field: str
    offset: Duration


class WonTrigger(StrictModel):
    kind: Literal["won"]
    delay: Duration = timedelta(0)


class LostTrigger(StrictModel):
    kind: Literal["lost"]
    delay: Duration = timedelta(0)
    reasons: list[str] | None = None  # loss reason codes; None = any reason


class RecurringTrigger(StrictModel):
    """Every `every_months` months after the deal was won (regular supplies, check-ups)."""

    kind: Literal["recurring"]
    every_months: int = Field(ge=1)
    starting: Literal["won"] = "won"


Trigger = Annotated[
    StageEntryTrigger
    | StalledTrigger
    | BeforeDateTrigger
    | AfterDateTrigger
    | WonTrigger
    | LostTrigger
    | RecurringTrigger,
    Field(discriminator="kind"),
]


# --- actions ----------------------------------------------------------------------------------


class NotifyAction(StrictModel):
    """A message to the client on the first channel of `channels` the contact can be reached on."""

    kind: Literal["notify"]
    channels: list[Channel] = Field(min_length=1)
    message: LocalizedText
    subject: LocalizedText | None = None  # email only

    @field_validator("channels")
    @classmethod
    def _channels_once(cls, channels: list[Channel]) -> list[Channel]:
        if len(set(channels)) != len(channels):
            raise ValueError(f"channels {channels} name a channel twice")
        return channels


class CreateDealAction(StrictModel):
    """A follow-on deal (repeat sale, win-back) in the funnel of template `funnel`."""

    kind: Literal["create_deal"]
    funnel: str
    stage: str | None = None  # None: the funnel's first stage
    title: LocalizedText


class MoveAction(StrictModel):
    kind: Literal["move"]
    stage: str


class SetFieldAction(StrictModel):
    kind: Literal["set_field"]
    field: str
    value: bool | int | float | str


class TaskAction(TaskFields):
    kind: Literal["task"]


class WebhookAction(StrictModel):
    """An outgoing webhook; `event` (e.g. "visit.reminder") is what the receiver routes on."""

    kind: Literal["webhook"]
    event: str

    @field_validator("event")
    @classmethod
    def _event_shape(cls, event: str) -> str:
        if not WEBHOOK_EVENT_RE.match(event):
            raise ValueError(
                f"webhook event {event!r} must be dot-separated lowercase names such as 'visit.reminder'"
            )
        return event


Action = Annotated[
    NotifyAction | CreateDealAction | MoveAction | SetFieldAction | TaskAction | WebhookAction,
    Field(discriminator="kind"),
]


class AutomationSpec(StrictModel):
    code: str
    name: LocalizedText
    derived: bool = False  # True when the seed only implies the automation
    trigger: Trigger
    actions: list[Action] = Field(min_length=1)
    only_in_stages: list[str] | None = None  # fire only while the deal is in one of these stages

    @field_validator("code")
    @classmethod
    def _code_shape(cls, code: str) -> str:
        if not AUTOMATION_CODE_RE.match(code):
            raise ValueError(
                f"automation code {code!r} must be lowercase Latin letters, digits and underscore, "
                "starting with a letter"
            )
        return code


# --- qualification bot ------------------------------------------------------------------------


class QualificationOption(StrictModel):
    code: str
    name: LocalizedText
    score: int


class QualificationQuestion(StrictModel):
    code: str
    text: LocalizedText
    field: str  # the deal field the answer is written to
    options: list[QualificationOption] = Field(default_factory=list)  # none: a free-text answer, scored 0


class QualificationSpec(StrictModel):
    """The Telegram bot's questions; a lead scoring at least `threshold` goes to `qualified_stage`."""

    questions: list[QualificationQuestion] = Field(min_length=1)
    qualified_stage: str
    rejected_stage: str
    threshold: int

    def max_score(self) -> int:
        return sum(max((o.score for o in q.options), default=0) for q in self.questions)


# --- validation (called from FunnelTemplate's model validator) --------------------------------

_DATE_TYPES = ("date", "datetime")
_NUMBER_TYPES = ("number", "money")


def check_automations(template: FunnelTemplate) -> None:
    """Every stage, field, loss reason, role and placeholder an automation names exists; raises
    TemplateRuleErrors with every problem found, not just the first."""
    problems = duplicates("automations", "automation code", [a.code for a in template.automations])
    for automation in template.automations:
        where = f"automations.{automation.code}"
        collect(problems, _check_trigger, template, automation, f"{where}.trigger")
        for index, action in enumerate(automation.actions):
            for text in _texts(action):
                collect(
                    problems,
                    _check_placeholders,
                    template,
                    automation.code,
                    text,
                    f"{where}.actions[{index}]",
                )
            collect(problems, _check_action, template, automation.code, action, f"{where}.actions[{index}]")
        for stage in automation.only_in_stages or []:
            collect(problems, _require_stage, template, stage, automation.code, f"{where}.only_in_stages")
    raise_all(problems)


def _fail(where: str, code: str, problem: str) -> TemplateRuleError:
    return TemplateRuleError(where, f"automation {code!r}: {problem}")


def _require_stage(template: FunnelTemplate, stage: str, code: str, where: str) -> None:
    if stage not in {s.code for s in template.stages}:
        raise _fail(where, code, f"stage {stage!r} is not a stage of this template")


def _check_trigger(template: FunnelTemplate, automation: AutomationSpec, where: str) -> None:
    trigger, code = automation.trigger, automation.code
    if isinstance(trigger, StageEntryTrigger | StalledTrigger):
        _require_stage(template, trigger.stage, code, where)
    elif isinstance(trigger, BeforeDateTrigger | AfterDateTrigger):
        field = next((f for f in template.fields if f.code == trigger.field), None)
        if field is None or field.type not in _DATE_TYPES:
            raise _fail(where, code, f"field {trigger.field!r} must be a declared date or datetime field")
    elif isinstance(trigger, LostTrigger) and trigger.reasons is not None:
        declared = {r.code for r in template.loss_reasons}
        raise_all(
            [
                _fail(where, code, f"loss reason {reason!r} is not declared under 'loss_reasons'")
                for reason in trigger.reasons
                if reason not in declared
            ]
        )


def _check_action(template: FunnelTemplate, code: str, action: Action, where: str) -> None:
    """The stage, role or field the action names; its texts are checked by _check_placeholders."""
    if isinstance(action, NotifyAction):
        if "email" in action.channels and action.subject is None:
            raise _fail(where, code, "a notification that may go by email needs a 'subject'")
        if "email" not in action.channels and action.subject is not None:
            raise _fail(where, code, "'subject' is for email, which is not among the channels")
    elif isinstance(action, MoveAction):
        _require_stage(template, action.stage, code, where)
    elif isinstance(action, CreateDealAction):
        # Another funnel's stages are checked by the loader, which sees the whole library.
        if action.funnel == template.key and action.stage:
            _require_stage(template, action.stage, code, where)
    elif isinstance(action, TaskAction):
        roles = {r.code for r in template.roles} | BUILTIN_ROLES
        if action.assignee not in roles:
            raise _fail(where, code, f"assigns a task to undeclared role {action.assignee!r}")
    elif isinstance(action, SetFieldAction):
        problem = _set_field_problem(template, action)
        if problem:
            raise _fail(where, code, problem)


def _texts(action: Action) -> list[LocalizedText]:
    if isinstance(action, NotifyAction):
        return [action.message] + ([action.subject] if action.subject else [])
    if isinstance(action, CreateDealAction | TaskAction):
        return [action.title]
    return []


def _check_placeholders(template: FunnelTemplate, code: str, text: LocalizedText, where: str) -> None:
    fields = [f.code for f in template.fields]
    raise_all(
        [
            _fail(
                where,
                code,
                f"unknown placeholder {{{name}}} in the {language} text (use deal.title, "
                "deal.amount, deal.<declared field>, contact.name, manager.name, company.name "
                "or optout_url)",
            )
            for language, value in (("ru", text.ru), ("en", text.en))
            for name in unknown_placeholders(value, fields)
        ]
    )


def _set_field_problem(template: FunnelTemplate, action: SetFieldAction) -> str | None:
    value = action.value
    if action.field == "amount":
        return None if _is_number(value) else f"amount must be set to a number, not {value!r}"
    if action.field == "loss_reason":
        declared = {r.code for r in template.loss_reasons}
        return None if value in declared else f"{value!r} is not a declared loss reason"
    field = next((f for f in template.fields if f.code == action.field), None)
    if field is None:
        return f"sets undeclared field {action.field!r}"
    if _value_fits(field, value):
        return None
    return f"value {value!r} does not fit field {field.code!r} of type {field.type!r}" + (
        f" (options: {', '.join(o.code for o in field.options)})" if field.options else ""
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _value_fits(field: FieldSpec, value: bool | int | float | str) -> bool:
    if field.type == "boolean":
        return isinstance(value, bool)
    if field.type in _NUMBER_TYPES:
        return _is_number(value)
    if not isinstance(value, str):
        return False
    if field.type == "enum":
        return value in {o.code for o in field.options}
    if field.type in _DATE_TYPES:
        return _parses_as(field.type, value)
    if field.type == "url":
        return value.startswith(("https://", "http://"))
    return True


def _parses_as(field_type: str, value: str) -> bool:
    try:
        (date.fromisoformat if field_type == "date" else datetime.fromisoformat)(value)
    except ValueError:
        return False
    return True


def check_qualification(template: FunnelTemplate) -> None:
    """The bot's questions, stages and threshold; raises TemplateRuleErrors with every problem."""
    spec = template.qualification
    if spec is None:
        return
    problems = duplicates("qualification.questions", "question code", [q.code for q in spec.questions])
    for question in spec.questions:
        collect(problems, _check_question, template, question)
    stages = {s.code for s in template.stages}
    for name, stage in (("qualified_stage", spec.qualified_stage), ("rejected_stage", spec.rejected_stage)):
        if stage not in stages:
            problems.append(
                TemplateRuleError(f"qualification.{name}", f"stage {stage!r} is not a stage of this template")
            )
    if spec.qualified_stage == spec.rejected_stage:
        problems.append(TemplateRuleError("qualification", "qualified_stage and rejected_stage must differ"))
    if not 0 < spec.threshold <= spec.max_score():
        problems.append(
            TemplateRuleError(
                "qualification.threshold",
                f"threshold {spec.threshold} must be between 1 and the highest possible score {spec.max_score()}",
            )
        )
    raise_all(problems)


# How a chosen option is written to the answer field: an enum takes the option's code, a boolean
# takes yes/no, a string or text takes the option's name; numbers, dates and URLs are typed in.
_BOOLEAN_OPTIONS = frozenset({"yes", "no"})
_OPTION_TYPES = ("enum", "boolean", "string", "text")


def _check_question(template: FunnelTemplate, question: QualificationQuestion) -> None:
    where = f"qualification.questions.{question.code}"
    raise_all(duplicates(f"{where}.options", "option code", [o.code for o in question.options]))
    field = next((f for f in template.fields if f.code == question.field), None)
    field_type = "money" if question.field == "amount" else field.type if field else None
    if field_type is None:
        raise TemplateRuleError(where, f"answer field {question.field!r} is not declared")
    codes = {o.code for o in question.options}
    if field_type not in _OPTION_TYPES and codes:
        raise TemplateRuleError(where, f"a {field_type} answer is typed in, so it cannot have options")
    if field_type in ("enum", "boolean") and not codes:
        raise TemplateRuleError(where, f"an answer to {field_type} field {question.field!r} needs options")
    if field_type == "boolean":
        allowed: set[str] = set(_BOOLEAN_OPTIONS)
    elif field is not None and field.type == "enum":
        allowed = {o.code for o in field.options}
    else:
        return
    if codes - allowed:
        raise TemplateRuleError(
            where,
            f"options {sorted(codes - allowed)} are not values of {field_type} field "
            f"{question.field!r}: {sorted(allowed)}",
        )


def deal_link_problems(template: FunnelTemplate, known: dict[str, FunnelTemplate]) -> list[tuple[str, str]]:
    """(field, reason) for each `create_deal` naming a funnel or stage that `known` lacks.

    Cross-template, so the loader calls it once every template is parsed.
    """
    problems: list[tuple[str, str]] = []
    for automation in template.automations:
        for index, action in enumerate(automation.actions):
            if not isinstance(action, CreateDealAction):
                continue
            where = f"automations.{automation.code}.actions[{index}]"
            target = known.get(action.funnel)
            if target is None:
                reason = f"creates a deal in unknown funnel template {action.funnel!r}"
            elif action.stage and action.stage not in {s.code for s in target.stages}:
                reason = f"stage {action.stage!r} is not a stage of {action.funnel!r}"
            else:
                continue
            problems.append((where, f"automation {automation.code!r}: {reason}"))
    return problems


# --- display ----------------------------------------------------------------------------------


def describe_trigger(trigger: Trigger) -> str:
    """One English line for the CLI, e.g. "1d before visit_at" or "lost +90d"."""
    if isinstance(trigger, StageEntryTrigger):
        return f"enters {trigger.stage}"
    if isinstance(trigger, StalledTrigger):
        return f"{format_duration(trigger.after)} in {trigger.stage} without moving on"
    if isinstance(trigger, BeforeDateTrigger):
        return f"{format_duration(trigger.offset)} before {trigger.field}"
    if isinstance(trigger, AfterDateTrigger):
        return f"{format_duration(trigger.offset)} after {trigger.field}"
    if isinstance(trigger, RecurringTrigger):
        return f"every {trigger.every_months} month(s) after won"
    delay = f" +{format_duration(trigger.delay)}" if trigger.delay else ""
    if isinstance(trigger, LostTrigger) and trigger.reasons:
        return f"lost{delay} ({', '.join(trigger.reasons)})"
    return f"{trigger.kind}{delay}"


def describe_action(action: Action) -> str:
    """One English line for the CLI; a notification's text is shown separately."""
    if isinstance(action, NotifyAction):
        return "notify via " + " > ".join(action.channels)
    if isinstance(action, CreateDealAction):
        return f"create deal in {action.funnel}" + (f" at {action.stage}" if action.stage else "")
    if isinstance(action, MoveAction):
        return f"move to {action.stage}"
    if isinstance(action, SetFieldAction):
        return f"set {action.field} = {action.value!r}"
    if isinstance(action, TaskAction):
        return f"task for {action.assignee} ({format_duration(action.due_in)}): {action.title.ru}"
    return f"webhook {action.event}"
