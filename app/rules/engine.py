"""Pure rules: what a funnel template demands of a deal, as a list of effects (future outbox rows).

No database, no clock, no CRM: callers pass the deal's state, the funnel's configuration and `now`.
Every effect carries its idempotency key, built from the deal, the stage entry it belongs to and the
rule, so evaluating the same situation twice yields the same keys and the outbox drops the repeat.
The rule and the entry are also carried as such (`Effect.rule`, `Effect.entry_id`), stored in their
own outbox columns: readers find a rule's commands by those, never by parsing keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from app.outbox.statuses import CommandStatus, RuleName
from funnel_templates.schema import LOSS_REASON_FIELD, FieldSpec, FunnelTemplate, StageSpec

# "redate" is not sent to the CRM: it changes the due date of a follow-up task still in the outbox.
EffectKind = Literal["move", "task", "comment", "task_due", "redate"]

# contact/company are not in the deal DTO: we cannot tell whether they are filled, so they are
# never enforced (a false "missing" would revert good deals).
UNCHECKABLE_FIELDS = frozenset({"contact", "company"})
BUILTIN_LABELS = {
    "amount": "Сумма сделки",
    "responsible": "Ответственный",
    "contact": "Контакт",
    "company": "Компания",
    LOSS_REASON_FIELD: "Причина отказа",
}
# The template gives no deadline for "fill in the fields" tasks; a working day is the usual default.
MISSING_FIELDS_TASK_DUE = timedelta(days=1)


@dataclass(frozen=True)
class FunnelRules:
    """One provisioned funnel as the engine needs it."""

    template: FunnelTemplate
    pipeline_id: str
    stage_ids: Mapping[str, str]  # stage code -> CRM stage id
    # Template field code -> keys of Deal.fields that may hold it, first present wins (the CRM field
    # id; for Bitrix24 also UF_CRM_<CODE>, since its snapshots are keyed by field name, not id).
    field_keys: Mapping[str, Sequence[str]]
    settings: Mapping[str, Any] = field(default_factory=dict)  # the connection's settings
    # Template field code -> {the CRM's option id -> option code} for enumerations (the loss reason
    # included): a Bitrix24 deal carries a list item's id, not its text.
    option_ids: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class DealState:
    id: int  # local deal id: keys must not collide across connections
    crm_deal_id: str
    title: str
    amount: Decimal | None
    responsible_id: str | None
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Effect:
    kind: EffectKind
    key: str
    payload: dict[str, Any]  # what is sent to the CRM, and nothing else
    rule: RuleName
    entry_id: int  # the stage transition (stage entry) the effect belongs to
    # Key of the effect this one must wait for: a comment saying the deal was moved goes only
    # after the move is done, and never when the move failed.
    after: str | None = None


@dataclass(frozen=True)
class StageEntry:
    """A deal's entry into a stage: what its effects are keyed by and belong to."""

    deal: DealState
    stage: StageSpec
    entry_id: int

    def effect(
        self,
        kind: EffectKind,
        rule: RuleName,
        suffix: str,
        payload: dict[str, Any],
        *,
        after: str | None = None,
    ) -> Effect:
        key = f"{entry_scope(self.deal.id, self.stage.code, self.entry_id)}:{suffix}"
        return Effect(kind, key, payload, rule, self.entry_id, after)


@dataclass(frozen=True)
class PreviousFollowUp:
    """The follow-up task already queued for this stage entry: its create command, where it stands,
    and the due date the newest command (the create, or the latest deadline move) gave it."""

    command_id: int  # the task's create command
    due_at: datetime
    title: str
    status: CommandStatus = CommandStatus.PENDING  # of the create command
    crm_task_id: str | None = None  # once the CRM created it
    last_command_id: int | None = None  # the command that set `due_at` (create or move)


def stamp(at: datetime) -> str:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def entry_scope(deal_id: int, stage_code: str, entry_id: int) -> str:
    """Key prefix of everything one stage entry causes. The entry is the StageTransition row: the
    mirror records each CRM stage change once (a duplicate webhook or a reconcile of the same change
    records nothing), and a new move is a new row even within the CRM clock's one-second resolution,
    where the modify time alone would not tell two entries apart."""
    return f"rules:{deal_id}:{stage_code}#{entry_id}"


# --- field checks ---------------------------------------------------------------------------------


def is_empty(value: Any) -> bool:
    if value is None or value is False:
        return True
    if isinstance(value, str):
        # Bitrix24 money fields read "|RUB" when only the currency is set.
        return not value.strip() or value.strip().startswith("|")
    if isinstance(value, list | tuple | set):
        return all(is_empty(v) for v in value)
    if isinstance(value, dict):
        return not value
    return False


def field_value(rules: FunnelRules, deal: DealState, code: str) -> Any:
    for key in rules.field_keys.get(code, ()):
        if key in deal.fields:
            return deal.fields[key]
    return None  # amoCRM leaves empty fields out of the lead altogether


def option_code(rules: FunnelRules, code: str, value: Any) -> str | None:
    """The template's code of an enumeration value as a deal carries it: the CRM's option id, or
    the option's code or name (amoCRM keeps a select's text; values written before option ids were
    recorded). A list counts by its first item. None when empty or not an option of the field."""
    if isinstance(value, list | tuple):
        value = next(iter(value), None)
    if value in (None, ""):
        return None
    text = str(value)
    known = rules.option_ids.get(code, {})
    if text in known:
        return known[text]
    if code == LOSS_REASON_FIELD:
        options = [(r.code, r.name) for r in rules.template.loss_reasons]
    else:
        spec = next((f for f in rules.template.fields if f.code == code), None)
        options = [(o.code, o.name) for o in spec.options] if spec else []
    return next((c for c, name in options if text in (c, name.ru, name.en)), None)


def option_name(rules: FunnelRules, spec: FieldSpec, value: Any, language: str = "ru") -> Any:
    """An enumeration value as people read it: its option's name; a value that is no option as it is."""
    code = option_code(rules, spec.code, value)
    option = next((o for o in spec.options if o.code == code), None)
    if option is None:
        return value
    return option.name.en if language == "en" else option.name.ru


def is_filled(rules: FunnelRules, deal: DealState, code: str) -> bool | None:
    """True/False, or None when FunnelSync cannot know (contact, company)."""
    if code in UNCHECKABLE_FIELDS:
        return None
    if code == "amount":
        return deal.amount is not None and deal.amount > 0
    if code == "responsible":
        return bool(deal.responsible_id)
    return not is_empty(field_value(rules, deal, code))


def missing_fields(rules: FunnelRules, stage: StageSpec, deal: DealState) -> list[str]:
    return [r.field for r in stage.required_fields if is_filled(rules, deal, r.field) is False]


def field_label(template: FunnelTemplate, code: str) -> str:
    for spec in template.fields:
        if spec.code == code:
            return spec.name.ru
    return BUILTIN_LABELS.get(code, code)


def labels(template: FunnelTemplate, codes: Sequence[str]) -> str:
    return ", ".join(f"«{field_label(template, c)}»" for c in codes)


# --- assignees and payloads -----------------------------------------------------------------------


def resolve_assignee(rules: FunnelRules, role: str, deal: DealState) -> tuple[str | None, str]:
    """The user id for a template role, and a note for the task description when we fell back."""
    if role == "responsible":
        return deal.responsible_id, ""
    if role == "supervisor":
        supervisor = rules.settings.get("supervisor_id")
        if supervisor:
            return str(supervisor), ""
        return (
            deal.responsible_id,
            "Руководитель не указан в настройках подключения; задача поставлена ответственному.",
        )
    roles = rules.settings.get("roles")
    user = roles.get(role) if isinstance(roles, Mapping) else None
    if user:
        return str(user), ""
    name = next((r.name.ru for r in rules.template.roles if r.code == role), role)
    return deal.responsible_id, (
        f"Роль «{name}» не назначена в настройках подключения; задача поставлена ответственному."
    )


@dataclass(frozen=True)
class TaskSpec:
    """A CRM task one rule asks for."""

    title: str
    due_at: datetime
    assignee: str | None
    description: str


def task_effect(entry: StageEntry, rule: RuleName, suffix: str, task: TaskSpec) -> Effect:
    payload: dict[str, Any] = {
        "crm_deal_id": entry.deal.crm_deal_id,
        "title": task.title,
        "due_at": task.due_at.astimezone(UTC).isoformat(),
        "responsible_id": task.assignee,
        "description": task.description,
    }
    return entry.effect("task", rule, suffix, payload)


def comment_effect(
    entry: StageEntry, rule: RuleName, suffix: str, text: str, *, after: str | None = None
) -> Effect:
    return entry.effect(
        "comment", rule, suffix, {"crm_deal_id": entry.deal.crm_deal_id, "text": text}, after=after
    )


def role_task(
    rules: FunnelRules, entry: StageEntry, role: str, title: str, due_at: datetime, note: str = ""
) -> TaskSpec:
    """A task for whoever holds `role`, described as coming from the entry's stage; `note` adds to
    the description (the fallback note, when the role had nobody, goes last)."""
    assignee, fallback = resolve_assignee(rules, role, entry.deal)
    description = _describe(rules, entry.stage, " ".join(n for n in (note, fallback) if n))
    return TaskSpec(title, due_at, assignee, description)


def _describe(rules: FunnelRules, stage: StageSpec, note: str) -> str:
    text = f"FunnelSync: этап «{stage.name.ru}» воронки «{rules.template.name.ru}»."
    return f"{text}\n{note}" if note else text


# --- stage entry ----------------------------------------------------------------------------------


def on_entry(
    rules: FunnelRules,
    deal: DealState,
    stage_code: str,
    *,
    entry_id: int,
    now: datetime,
    from_stage_code: str | None,
    previous_follow_up: PreviousFollowUp | None = None,
) -> list[Effect]:
    """Effects of a deal entering `stage_code`. A revert replaces everything else: the deal does not
    stay in the stage, so its tasks and follow-up would be noise."""
    entry = StageEntry(deal, rules.template.stage(stage_code), entry_id)
    missing = missing_fields(rules, entry.stage, deal)
    if missing and entry.stage.on_missing_fields == "revert":
        revert = revert_effects(rules, entry, missing, from_stage_code)
        if revert is not None:
            return revert
        effects = [cannot_revert_comment(rules, entry, missing)]
    else:
        effects = missing_fields_effects(rules, entry, missing, now)
    effects.extend(stage_tasks(rules, entry, now))
    effects.extend(follow_up(rules, deal, stage_code, entry_id=entry_id, previous=previous_follow_up))
    return effects


def revert_effects(
    rules: FunnelRules, entry: StageEntry, missing: Sequence[str], from_stage_code: str | None
) -> list[Effect] | None:
    """The move back to the stage the deal came from, then the comment saying why; None when there
    is nowhere to go back to (created in this stage, came from an unmanaged stage, or re-entered the
    same stage: "reverting" into it would loop)."""
    back = rules.stage_ids.get(from_stage_code) if from_stage_code else None
    if back is None or not from_stage_code or from_stage_code == entry.stage.code:
        return None
    back_name = rules.template.stage(from_stage_code).name.ru
    payload = {"crm_deal_id": entry.deal.crm_deal_id, "pipeline_id": rules.pipeline_id, "stage_id": back}
    move = entry.effect("move", RuleName.REVERT_MOVE, "revert:move", payload)
    text = (
        f"Сделка возвращена на этап «{back_name}»: для этапа «{entry.stage.name.ru}» "
        f"не заполнены обязательные поля: {labels(rules.template, missing)}."
    )
    # It says the deal was moved back: sent only once it was.
    return [move, comment_effect(entry, RuleName.REVERT_COMMENT, "revert:comment", text, after=move.key)]


def cannot_revert_comment(rules: FunnelRules, entry: StageEntry, missing: Sequence[str]) -> Effect:
    text = (
        f"Для этапа «{entry.stage.name.ru}» не заполнены обязательные поля: {labels(rules.template, missing)}. "
        "Вернуть сделку на предыдущий этап нельзя: он неизвестен."
    )
    # The key (and rule) of the revert's comment: it stands in for the revert.
    return comment_effect(entry, RuleName.REVERT_COMMENT, "revert:comment", text)


def missing_fields_effects(
    rules: FunnelRules, entry: StageEntry, missing: Sequence[str], now: datetime
) -> list[Effect]:
    """The comment or the "fill them in" task a stage asks for when required fields are empty (its
    on_missing_fields, other than revert)."""
    if not missing:
        return []
    stage = entry.stage
    if stage.on_missing_fields == "comment":
        text = (
            f"Сделка на этапе «{stage.name.ru}», но не заполнены обязательные поля: "
            f"{labels(rules.template, missing)}."
        )
        return [comment_effect(entry, RuleName.MISSING_FIELDS_COMMENT, "missing:comment", text)]
    title = f"Заполнить обязательные поля этапа «{stage.name.ru}»: {labels(rules.template, missing)}"
    task = role_task(rules, entry, "responsible", title, now + MISSING_FIELDS_TASK_DUE)
    return [task_effect(entry, RuleName.MISSING_FIELDS_TASK, "missing:task", task)]


def stage_tasks(rules: FunnelRules, entry: StageEntry, now: datetime) -> list[Effect]:
    return [
        task_effect(
            entry,
            RuleName.STAGE_TASK,
            f"task:{index}",
            role_task(rules, entry, spec.assignee, spec.title.ru, now + spec.due_in),
        )
        for index, spec in enumerate(entry.stage.tasks)
    ]


# --- follow-up ------------------------------------------------------------------------------------


def parse_when(value: Any) -> datetime | None:
    """A date/datetime field value as the CRMs report it: amoCRM unix seconds (as text), Bitrix24
    ISO 8601 with offset or a bare date. Naive values are taken as UTC."""
    if isinstance(value, list | tuple):
        value = next((v for v in value if not is_empty(v)), None)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, int | float | Decimal):
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (ValueError, OverflowError, OSError):  # NaN, or beyond the calendar: not a date
            return None
    else:
        text = str(value).strip()
        try:
            return datetime.fromtimestamp(float(Decimal(text)), UTC)
        except (InvalidOperation, ValueError, OverflowError):
            pass
        try:
            parsed = datetime.fromisoformat(text.replace(" ", "T", 1))
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def follow_up(
    rules: FunnelRules,
    deal: DealState,
    stage_code: str,
    *,
    entry_id: int,
    previous: PreviousFollowUp | None,
) -> list[Effect]:
    """The follow-up task for the field's current date. When the date changes the task moves with
    it: a task the CRM already has gets its deadline moved, one still in the outbox is re-dated
    there, and one that could not be created (dead) is created again. Keys carry the command that
    set the previous date, so going back to an earlier date is a change too, and the same date seen
    again is nothing."""
    entry = StageEntry(deal, rules.template.stage(stage_code), entry_id)
    spec = entry.stage.follow_up
    if spec is None:
        return []
    when = parse_when(field_value(rules, deal, spec.field))
    if when is None:
        return []
    due = when - spec.lead_time
    if previous is not None and previous.due_at == due:
        return []
    if previous is None or previous.status == CommandStatus.DEAD:
        suffix = f"fu:{previous.command_id if previous else 0}:{stamp(due)}"
        task = role_task(rules, entry, spec.assignee, spec.title.ru, due)
        return [task_effect(entry, RuleName.FOLLOW_UP_TASK, suffix, task)]
    return [_follow_up_new_due(entry, previous, due)]


def _follow_up_new_due(entry: StageEntry, previous: PreviousFollowUp, due: datetime) -> Effect:
    """The new due date for a follow-up task already queued: re-dated in the outbox while the CRM
    does not have it yet ("redate": the create command's own rule), else its deadline moved there."""
    after = previous.last_command_id or previous.command_id
    due_iso = due.astimezone(UTC).isoformat()
    if previous.crm_task_id is None:
        payload: dict[str, Any] = {"command_id": previous.command_id, "due_at": due_iso}
        return entry.effect("redate", RuleName.FOLLOW_UP_TASK, f"fu-redate:{after}:{stamp(due)}", payload)
    payload = {"crm_deal_id": entry.deal.crm_deal_id, "task_id": previous.crm_task_id, "due_at": due_iso,
               "task_command_id": previous.command_id}  # fmt: skip
    return entry.effect(
        "task_due", RuleName.FOLLOW_UP_DEADLINE_MOVE, f"fu-move:{after}:{stamp(due)}", payload
    )


def _human(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%d.%m.%Y %H:%M UTC")


# --- SLA ------------------------------------------------------------------------------------------


def sla_deadline(stage: StageSpec, entered_at: datetime) -> datetime | None:
    return entered_at + stage.sla.within if stage.sla else None


def sla_escalation(
    rules: FunnelRules,
    deal: DealState,
    stage_code: str,
    *,
    entry_id: int,
    entered_at: datetime,
    now: datetime,
) -> Effect | None:
    """One escalation task per stay in the stage once its SLA is exceeded (the key is the entry's)."""
    entry = StageEntry(deal, rules.template.stage(stage_code), entry_id)
    stage = entry.stage
    deadline = sla_deadline(stage, entered_at)
    if stage.sla is None or deadline is None or now <= deadline:
        return None
    overdue = (
        f"Сделка «{deal.title}» находится на этапе «{stage.name.ru}» дольше {_duration(stage.sla.within)}"
        f" (с {_human(entered_at)})."
    )
    title = f"Просрочен срок этапа «{stage.name.ru}»: {deal.title}"[:250]
    task = role_task(rules, entry, stage.sla.escalate_to, title, now + timedelta(hours=1), overdue)
    return task_effect(entry, RuleName.SLA_ESCALATION, "sla", task)


def _duration(value: timedelta) -> str:
    minutes = int(value.total_seconds()) // 60
    if minutes < 60:
        return f"{minutes} мин."
    if minutes < 1440:
        return f"{minutes // 60} ч."
    return f"{minutes // 1440} дн."
