"""Provisioning plan: what must change in a CRM so a pipeline matches a funnel template.

Pure functions over DTOs: the current CRM state and the mapping FunnelSync stored on earlier runs
go in, an ordered list of plan items comes out. Nothing here talks to a CRM or the database, which
is what lets `--dry-run` show exactly what a real run would do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import Any, ClassVar, Literal

from connectors.amocrm import events as amocrm_events
from connectors.base import (
    Capabilities,
    CustomField,
    FieldRequirement,
    LossReason,
    NewField,
    NewStage,
    Pipeline,
    Stage,
    StageChange,
    WebhookSubscription,
)
from funnel_templates.automations import AutomationSpec, NotifyAction, WebhookAction
from funnel_templates.schema import LOSS_REASON_FIELD, FunnelTemplate, StageSpec

Action = Literal["create", "change", "unchanged", "delete", "blocked", "unmanaged", "manual"]
ItemKind = Literal["pipeline", "stage", "field", "requirement", "loss_reason", "webhook", "automation"]

SYMBOLS: dict[Action, str] = {
    "create": "+",
    "change": "~",
    "unchanged": "=",
    "delete": "-",
    "blocked": "!",
    "unmanaged": "?",
    "manual": "!",
}

SORT_STEP = 10
# Which webhook events a CRM is subscribed to is its descriptor's business (connectors/<crm>/); this
# name stays for callers that imported amoCRM's list from here.
AMOCRM_EVENTS = amocrm_events.WEBHOOK_EVENTS


class PlanLimitError(ValueError):
    """The plan would break a CRM limit; raised before anything is written."""


# Every line and reason a plan can show, in English, by key. The CLI and the JSON print these; the
# dashboard shows the label of the same key (app/dashboard/labels/plan.py has the Russian).
PLAN_TEXTS: dict[str, str] = {
    "plan_pipeline_new": "pipeline «{name}»",
    "plan_pipeline": "pipeline {id}",
    "plan_pipeline_adopted": "found by name and adopted",
    "plan_stage_new": "stage «{name}» ({semantics})",
    "plan_stage_new_reused": "stage «{name}» ({semantics}) (the CRM's own won/lost stage is reused)",
    "plan_stage_mapped": "stage «{name}» → {id}",
    "plan_stage_reuses_default": "reuses a stage the CRM created with the pipeline",
    "plan_stage_crm": "stage «{name}» ({id})",
    "plan_stage_crm_own": "the CRM's own stage; left as is",
    "plan_stage_holds_deals": "no longer in the template but holds {deals} deal(s); move them, then run again",
    "plan_stage_not_in_template": "no longer in the template",
    "plan_stage_default_unused": "default stage the template does not use",
    "plan_stage_by_hand": "added in the CRM by hand; left alone",
    "plan_field_new": "field «{name}» ({type})",
    "plan_field_mapped": "field «{name}» → {crm_name}",
    "plan_field_options_missing": (
        "options missing in the CRM: {options}; add them to the field in the CRM"
        " (FunnelSync does not edit existing fields)"
    ),
    "plan_requirement": "«{field}» required at {stages}",
    "plan_loss_reason_new": "loss reason «{name}»",
    "plan_loss_reason_mapped": "loss reason «{name}» → {id}",
    "plan_webhook": "webhook {url}",
    "plan_webhook_events": "webhook {url} ({events})",
    "plan_webhook_by_hand": (
        "register it by hand in the CRM (outgoing webhook) with handler URL {url} and events {events};"
        " then store its application token on the connection"
    ),
    "plan_webhook_seen": "registered by hand: events with the connection's application token arrive (first at {at})",
    "plan_webhook_disabled": "the CRM disabled it",
    "plan_automation": "automation «{name}»",
    "plan_automation_runs": "runs in FunnelSync; nothing to write to the CRM",
    "plan_automation_no_account": (
        "no {channels} account on this connection yet: its messages wait until one is set"
    ),
}


@dataclass(frozen=True)
class PlanText:
    """A plan line or reason: a PLAN_TEXTS key and the values of its {names}."""

    key: str
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return PLAN_TEXTS[self.key].format(**self.params)

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "params": self.params}


def text(key: str, **params: Any) -> PlanText:
    return PlanText(key, params)


@dataclass(frozen=True)
class CRMState:
    """What the CRM has now, read before planning."""

    pipelines: Sequence[Pipeline]
    fields: Sequence[CustomField]
    loss_reasons: Sequence[LossReason] | None  # None: the CRM has no loss-reason API
    webhooks: Sequence[WebhookSubscription] | None  # None: no registration API for this auth
    deal_counts: dict[str, int] = field(default_factory=dict)  # stage id -> deals in it


@dataclass(frozen=True)
class StoredMapping:
    """What earlier runs recorded for this funnel in this connection."""

    pipeline_id: str | None = None
    stages: dict[str, str] = field(default_factory=dict)  # stage code -> CRM stage id
    fields: dict[str, str] = field(default_factory=dict)  # field code -> CRM field id
    loss_reasons: dict[str, str] = field(default_factory=dict)  # reason code -> CRM id
    # FunnelSync created the pipeline and has not finished provisioning it yet: the CRM's default
    # stages in it are ours to reuse or remove.
    setting_up_own_pipeline: bool = False
    other_funnels_pipeline_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PlanContext:
    crm: str
    capabilities: Capabilities
    webhook_url: str
    webhook_events: tuple[str, ...]
    webhook_auto: bool  # False: the user must register the webhook in the CRM's UI
    # The URL as shown to people: amoCRM's carries a secret, masked here (plans are printed).
    webhook_display_url: str = ""
    # A webhook registered by hand (webhook_auto False): when the first event carrying the
    # connection's current application token arrived, None while none has (webhook_upkeep).
    webhook_seen_at: datetime | None = None
    # The message channels the connection has accounts for (None: not known, nothing is checked).
    channel_accounts: frozenset[str] | None = None

    @property
    def shown_url(self) -> str:
        return self.webhook_display_url or self.webhook_url


@dataclass
class PlanItem:
    action: Action
    kind: ItemKind
    code: str
    line: PlanText
    why: PlanText | None = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # attribute -> (now, wanted)
    # What the applier needs; not part of the JSON view.
    payload: Any = None

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.action]

    @property
    def summary(self) -> str:
        return str(self.line)

    @property
    def reason(self) -> str | None:
        return str(self.why) if self.why else None

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "symbol": self.symbol,
            "kind": self.kind,
            "code": self.code,
            "summary": self.summary,
            "reason": self.reason,
            # The same two as a key and values, for a reader that words them itself (the dashboard).
            "line": self.line.as_json(),
            "why": self.why.as_json() if self.why else None,
            "changes": {k: {"from": a, "to": b} for k, (a, b) in self.changes.items()},
        }


@dataclass
class Plan:
    template_key: str
    pipeline_id: str | None
    items: list[PlanItem]

    WRITES: ClassVar[frozenset[Action]] = frozenset({"create", "change", "delete"})

    @property
    def writes(self) -> list[PlanItem]:
        return [i for i in self.items if i.action in self.WRITES]

    @property
    def has_writes(self) -> bool:
        return bool(self.writes)

    def of(self, kind: ItemKind, *actions: Action) -> list[PlanItem]:
        return [i for i in self.items if i.kind == kind and (not actions or i.action in actions)]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.action] = counts.get(item.action, 0) + 1
        return counts

    def as_json(self) -> dict[str, Any]:
        return {
            "template": self.template_key,
            "pipeline_id": self.pipeline_id,
            "counts": self.counts(),
            "items": [i.as_json() for i in self.items],
        }


def desired_sort(index: int) -> int:
    return (index + 1) * SORT_STEP


def plan_provisioning(
    template: FunnelTemplate, state: CRMState, mapping: StoredMapping, ctx: PlanContext
) -> Plan:
    caps = ctx.capabilities
    items: list[PlanItem] = []
    pipeline = _find_pipeline(template, state, mapping)

    if pipeline is None:
        _check_new_pipeline_limits(template, state, caps)
        items.append(
            PlanItem(
                "create",
                "pipeline",
                template.key,
                text("plan_pipeline_new", name=template.name.ru),
                payload={"name": template.name.ru, "sort": _next_pipeline_sort(state)},
            )
        )
        items.extend(_plan_stages_for_new_pipeline(template, caps))
    else:
        if pipeline.name != template.name.ru:
            items.append(
                PlanItem(
                    "change",
                    "pipeline",
                    template.key,
                    text("plan_pipeline", id=pipeline.id),
                    changes={"name": (pipeline.name, template.name.ru)},
                    payload={"name": template.name.ru},
                )
            )
        else:
            why = None if mapping.pipeline_id else text("plan_pipeline_adopted")
            items.append(
                PlanItem("unchanged", "pipeline", template.key, text("plan_pipeline", id=pipeline.id), why)
            )
        items.extend(_plan_stages(template, pipeline, state, mapping, ctx))

    items.extend(_plan_fields(template, state, mapping, caps))
    items.extend(_plan_requirements(template, state, mapping, caps, pipeline))
    items.extend(_plan_loss_reasons(template, state, caps))
    items.append(_plan_webhook(state, ctx))
    items.extend(_plan_automations(template, ctx))
    return Plan(template.key, pipeline.id if pipeline else None, items)


# --- pipeline -------------------------------------------------------------------------------------


def _find_pipeline(template: FunnelTemplate, state: CRMState, mapping: StoredMapping) -> Pipeline | None:
    by_id = {p.id: p for p in state.pipelines}
    if mapping.pipeline_id is not None:
        return by_id.get(mapping.pipeline_id)
    # Neither CRM rejects duplicate pipeline names, and a create whose response was lost leaves a
    # pipeline we never recorded: adopt an unmapped one with exactly the template's name.
    for pipeline in state.pipelines:
        if pipeline.name == template.name.ru and pipeline.id not in mapping.other_funnels_pipeline_ids:
            return pipeline
    return None


def _next_pipeline_sort(state: CRMState) -> int:
    return max((p.sort for p in state.pipelines), default=0) + SORT_STEP


def _check_new_pipeline_limits(template: FunnelTemplate, state: CRMState, caps: Capabilities) -> None:
    if caps.max_pipelines is not None and len(state.pipelines) >= caps.max_pipelines:
        raise PlanLimitError(
            f"the CRM already has {len(state.pipelines)} pipelines and allows at most "
            f"{caps.max_pipelines}; archive or delete one before provisioning {template.key}"
        )


def _check_stage_limits(
    template: FunnelTemplate, total_stages: int, pipeline_id: str, caps: Capabilities
) -> None:
    if caps.max_stages_per_pipeline is not None and total_stages > caps.max_stages_per_pipeline:
        raise PlanLimitError(
            f"the pipeline would have {total_stages} stages including the CRM's own; the CRM allows "
            f"at most {caps.max_stages_per_pipeline}"
        )
    if caps.stage_id_format and caps.stage_id_max_length:
        for stage in template.stages:
            stage_id = caps.stage_id_format.format(pipeline_id=pipeline_id, code=stage.code)
            if len(stage_id) > caps.stage_id_max_length:
                raise PlanLimitError(
                    f"stage id {stage_id!r} would be {len(stage_id)} characters; the CRM allows "
                    f"{caps.stage_id_max_length} (shorten stage code {stage.code!r})"
                )


# --- stages ---------------------------------------------------------------------------------------


def _new_stage(spec: StageSpec, index: int) -> NewStage:
    return NewStage(spec.code, spec.name.ru, desired_sort(index), spec.color, spec.semantics)


def _plan_stages_for_new_pipeline(template: FunnelTemplate, caps: Capabilities) -> list[PlanItem]:
    items = []
    for index, spec in enumerate(template.stages):
        reused = caps.fixed_final_stages and spec.semantics != "process"
        key = "plan_stage_new_reused" if reused else "plan_stage_new"
        items.append(
            PlanItem(
                "create",
                "stage",
                spec.code,
                text(key, name=spec.name.ru, semantics=spec.semantics),
                payload=_new_stage(spec, index),
            )
        )
    return items


def _plan_stages(
    template: FunnelTemplate,
    pipeline: Pipeline,
    state: CRMState,
    mapping: StoredMapping,
    ctx: PlanContext,
) -> list[PlanItem]:
    caps = ctx.capabilities
    claimed = _claim_stages(template, pipeline, mapping, caps)
    mapped_ids = set(mapping.stages.values())
    claimed_ids = {stage.id for stage in claimed.values()}
    leftovers = [s for s in pipeline.stages if s.id not in claimed_ids]
    total = len(template.stages) + sum(1 for s in leftovers if not _removable(s, mapping, mapped_ids, state))
    _check_stage_limits(template, total, pipeline.id, caps)

    items = _plan_template_stages(template, claimed, mapping, caps)
    items.extend(_plan_leftover_stage(stage, state, mapping, mapped_ids) for stage in leftovers)
    return items


def _claim_stages(
    template: FunnelTemplate, pipeline: Pipeline, mapping: StoredMapping, caps: Capabilities
) -> dict[str, Stage]:
    """The CRM stage each template stage code stands for: the one earlier runs recorded, else one
    adopted (_adopt_stages). Codes with neither are missing and get created."""
    crm_stages = {s.id: s for s in pipeline.stages}
    claimed: dict[str, Stage] = {}
    for spec in template.stages:
        stage = crm_stages.get(mapping.stages.get(spec.code, ""))
        if stage is not None:
            claimed[spec.code] = stage
    _adopt_stages(template, pipeline, mapping, claimed, caps)
    return claimed


def _plan_template_stages(
    template: FunnelTemplate, claimed: dict[str, Stage], mapping: StoredMapping, caps: Capabilities
) -> list[PlanItem]:
    """One item per template stage, in template order: create it, or change or keep its CRM stage."""
    items: list[PlanItem] = []
    process_sorts = _process_sorts(template, claimed)
    # Each final stage must sort after everything before it: the sort the previous one ends up with.
    previous_final_sort = max(process_sorts.values(), default=0)
    for index, spec in enumerate(template.stages):
        stage = claimed.get(spec.code)
        if spec.semantics == "process":
            wanted_sort = process_sorts[spec.code]
        else:
            wanted_sort = max(desired_sort(index), previous_final_sort + SORT_STEP)
        if stage is None:
            items.append(_create_stage_item(spec, wanted_sort))
            sort_after = wanted_sort
        else:
            changes = _stage_changes(spec, stage, wanted_sort, previous_final_sort, caps)
            adopted = mapping.stages.get(spec.code) != stage.id
            items.append(_existing_stage_item(spec, stage, changes, adopted))
            sort_after = changes["sort"][1] if "sort" in changes else stage.sort
        if spec.semantics != "process":
            previous_final_sort = sort_after
    return items


def _create_stage_item(spec: StageSpec, sort: int) -> PlanItem:
    return PlanItem(
        "create",
        "stage",
        spec.code,
        text("plan_stage_new", name=spec.name.ru, semantics=spec.semantics),
        payload=NewStage(spec.code, spec.name.ru, sort, spec.color, spec.semantics),
    )


def _stage_changes(
    spec: StageSpec, stage: Stage, wanted_sort: int, previous_final_sort: int, caps: Capabilities
) -> dict[str, tuple[Any, Any]]:
    """What differs between a CRM stage and its template stage: attribute -> (now, wanted)."""
    changes: dict[str, tuple[Any, Any]] = {}
    if stage.name != spec.name.ru:
        changes["name"] = (stage.name, spec.name.ru)
    styleable = spec.semantics == "process" or caps.final_stages_styleable
    if styleable and (stage.color or "").lower() != spec.color:
        changes["color"] = (stage.color, spec.color)
    if spec.semantics == "process":
        if stage.sort != wanted_sort:
            changes["sort"] = (stage.sort, wanted_sort)
    # Final stages only need to stay after everything before them; the CRMs pin their own
    # won/lost sorts far out (amoCRM 10000/11000), which is fine as long as order holds.
    elif stage.sort <= previous_final_sort and caps.final_stages_styleable:
        changes["sort"] = (stage.sort, wanted_sort)
    return changes


def _existing_stage_item(
    spec: StageSpec, stage: Stage, changes: dict[str, tuple[Any, Any]], adopted: bool
) -> PlanItem:
    label = text("plan_stage_mapped", name=spec.name.ru, id=stage.id)
    reason = text("plan_stage_reuses_default") if adopted else None
    if not changes:
        return PlanItem("unchanged", "stage", spec.code, label, reason, payload=(None, stage))
    change = StageChange(
        stage,
        name=changes["name"][1] if "name" in changes else None,
        sort=changes["sort"][1] if "sort" in changes else None,
        color=changes["color"][1] if "color" in changes else None,
    )
    return PlanItem("change", "stage", spec.code, label, reason, changes, payload=(change, stage))


def _process_sorts(template: FunnelTemplate, claimed: dict[str, Stage]) -> dict[str, int]:
    """Wanted SORT of every process stage. What counts is order, not the numbers: while the stages
    the CRM has are already in template order their sorts are kept (a CRM may renumber them) and new
    stages are fitted between their neighbours; only a wrong order renumbers them all."""
    process = [s for s in template.stages if s.semantics == "process"]
    current = [claimed[s.code].sort if s.code in claimed else None for s in process]
    known = [c for c in current if c is not None]
    if all(a < b for a, b in pairwise(known)):
        wanted: dict[str, int] = {}
        previous = 0
        for i, spec in enumerate(process):
            sort = current[i]
            if sort is None:
                following = next((c for c in current[i + 1 :] if c is not None), None)
                sort = previous + SORT_STEP if following is None else (previous + following) // 2
                if following is not None and not previous < sort < following:
                    break  # no room between the neighbours: renumber everything
            wanted[spec.code] = sort
            previous = sort
        else:
            return wanted
    return {spec.code: desired_sort(i) for i, spec in enumerate(process)}


def _adopt_stages(
    template: FunnelTemplate,
    pipeline: Pipeline,
    mapping: StoredMapping,
    claimed: dict[str, Stage],
    caps: Capabilities,
) -> None:
    """Match unmapped template stages to CRM stages we may take over instead of creating new ones.

    First by identity: a stage whose id is the one the CRM derives from our code (Bitrix24
    "C5:CODE") or whose name is the template stage's, which is how a create whose response was
    lost is recognised instead of duplicated. Then the CRM's own won/lost stages, and its default
    process stages while we set up our own pipeline (Bitrix24 fills a new category with NEW...).
    """
    taken = {s.id for s in claimed.values()}
    mapped_elsewhere = set(mapping.stages.values())
    free = [
        s
        for s in sorted(pipeline.stages, key=lambda s: s.sort)
        if s.id not in taken and s.id not in mapped_elsewhere and s.editable
    ]
    for spec in template.stages:
        if spec.code in claimed:
            continue
        derived_id = (
            caps.stage_id_format.format(pipeline_id=pipeline.id, code=spec.code)
            if caps.stage_id_format
            else None
        )
        for stage in free:
            if stage.semantics == spec.semantics and (stage.id == derived_id or stage.name == spec.name.ru):
                claimed[spec.code] = stage
                free.remove(stage)
                break
    for spec in template.stages:
        if spec.code in claimed:
            continue
        for stage in free:
            if stage.semantics != spec.semantics:
                continue
            if spec.semantics == "process" and not mapping.setting_up_own_pipeline:
                continue
            claimed[spec.code] = stage
            free.remove(stage)
            break


def _removable(stage: Stage, mapping: StoredMapping, mapped_ids: set[str], state: CRMState) -> bool:
    ours = stage.id in mapped_ids or (mapping.setting_up_own_pipeline and stage.editable)
    return ours and not _is_pinned(stage) and state.deal_counts.get(stage.id, 0) == 0


def _is_pinned(stage: Stage) -> bool:
    """The CRM's own won/lost stages and non-editable system stages cannot be deleted."""
    return not stage.editable or (stage.system and stage.semantics != "process")


def _plan_leftover_stage(
    stage: Stage, state: CRMState, mapping: StoredMapping, mapped_ids: set[str]
) -> PlanItem:
    label = text("plan_stage_crm", name=stage.name, id=stage.id)
    if not stage.editable or _is_pinned(stage):
        return PlanItem("unmanaged", "stage", stage.id, label, text("plan_stage_crm_own"))
    if stage.id in mapped_ids or mapping.setting_up_own_pipeline:
        deals = state.deal_counts.get(stage.id, 0)
        if deals:
            return PlanItem(
                "blocked",
                "stage",
                stage.id,
                label,
                text("plan_stage_holds_deals", deals=deals),
            )
        why = text("plan_stage_not_in_template" if stage.id in mapped_ids else "plan_stage_default_unused")
        return PlanItem("delete", "stage", stage.id, label, why, payload=stage)
    return PlanItem("unmanaged", "stage", stage.id, label, text("plan_stage_by_hand"))


# --- fields, requirements, loss reasons -----------------------------------------------------------


def desired_fields(template: FunnelTemplate, caps: Capabilities) -> list[NewField]:
    fields = [
        NewField(f.code, f.name.ru, f.type, tuple(o.name.ru for o in f.options), sort=500 + i * 10)
        for i, f in enumerate(template.fields)
    ]
    if template.loss_reasons and not caps.native_loss_reasons:
        # No loss-reason API (Bitrix24): an enumeration field on the deal carries the reason.
        fields.append(
            NewField(
                LOSS_REASON_FIELD,
                "Причина отказа",
                "enum",
                tuple(r.name.ru for r in template.loss_reasons),
                sort=500 + len(template.fields) * 10,
            )
        )
    return fields


def _plan_fields(
    template: FunnelTemplate, state: CRMState, mapping: StoredMapping, caps: Capabilities
) -> list[PlanItem]:
    by_id = {f.id: f for f in state.fields}
    by_code = {f.code: f for f in state.fields if f.code}
    items = []
    for wanted in desired_fields(template, caps):
        existing = by_id.get(mapping.fields.get(wanted.code, "")) or by_code.get(wanted.code)
        if existing is None:
            items.append(
                PlanItem(
                    "create",
                    "field",
                    wanted.code,
                    text("plan_field_new", name=wanted.name, type=wanted.type),
                    payload=wanted,
                )
            )
            continue
        missing_options = [o for o in wanted.options if o not in {x.value for x in existing.options}]
        label = text("plan_field_mapped", name=wanted.name, crm_name=existing.crm_name)
        if missing_options:
            items.append(
                PlanItem(
                    "blocked",
                    "field",
                    wanted.code,
                    label,
                    text("plan_field_options_missing", options=", ".join(missing_options)),
                    payload=existing,
                )
            )
        else:
            items.append(PlanItem("unchanged", "field", wanted.code, label, payload=existing))
    return items


def _plan_requirements(
    template: FunnelTemplate,
    state: CRMState,
    mapping: StoredMapping,
    caps: Capabilities,
    pipeline: Pipeline | None,
) -> list[PlanItem]:
    """amoCRM enforces "required on entering a stage" itself (required_statuses); elsewhere the
    FunnelSync rules engine checks required fields when a deal enters the stage."""
    if not caps.required_fields_by_stage:
        return []
    custom = {f.code for f in template.fields}
    wanted: dict[str, list[str]] = {}
    for spec in template.stages:
        for required in spec.required_fields:
            if required.field in custom:
                wanted.setdefault(required.field, []).append(spec.code)
    by_id = {f.id: f for f in state.fields}
    by_code = {f.code: f for f in state.fields if f.code}
    pipeline_id = pipeline.id if pipeline else None
    items = []
    for code, stage_codes in wanted.items():
        existing = by_id.get(mapping.fields.get(code, "")) or by_code.get(code)
        stage_ids = [mapping.stages.get(c) for c in stage_codes]
        current = {s for p, s in (existing.required_stages if existing else ()) if p == pipeline_id}
        line = text("plan_requirement", field=code, stages=", ".join(stage_codes))
        if existing is not None and None not in stage_ids and current == set(stage_ids):
            items.append(PlanItem("unchanged", "requirement", code, line))
        else:
            items.append(
                PlanItem(
                    "create" if not current else "change",
                    "requirement",
                    code,
                    line,
                    payload=tuple(stage_codes),
                )
            )
    return items


def _plan_loss_reasons(template: FunnelTemplate, state: CRMState, caps: Capabilities) -> list[PlanItem]:
    if not template.loss_reasons or not caps.native_loss_reasons or state.loss_reasons is None:
        return []
    existing = {r.name: r for r in state.loss_reasons}
    items = []
    for reason in template.loss_reasons:
        found = existing.get(reason.name.ru)
        if found is None:
            items.append(
                PlanItem(
                    "create",
                    "loss_reason",
                    reason.code,
                    text("plan_loss_reason_new", name=reason.name.ru),
                    payload=reason,
                )
            )
        else:
            items.append(
                PlanItem(
                    "unchanged",
                    "loss_reason",
                    reason.code,
                    text("plan_loss_reason_mapped", name=reason.name.ru, id=found.id),
                    payload=found,
                )
            )
    return items


def _plan_webhook(state: CRMState, ctx: PlanContext) -> PlanItem:
    events = ", ".join(ctx.webhook_events)
    url = ctx.shown_url
    if not ctx.webhook_auto or state.webhooks is None:
        if ctx.webhook_seen_at is not None:
            # Registered by hand, and the CRM has been sending with the token we hold: nothing to do.
            seen = text("plan_webhook_seen", at=ctx.webhook_seen_at.strftime("%Y-%m-%d %H:%M UTC"))
            return PlanItem("unchanged", "webhook", "deal-events", text("plan_webhook", url=url), seen)
        return PlanItem(
            "manual",
            "webhook",
            "deal-events",
            text("plan_webhook", url=url),
            text("plan_webhook_by_hand", url=url, events=events),
        )
    for hook in state.webhooks:
        if hook.url == ctx.webhook_url and set(ctx.webhook_events) <= set(hook.events):
            if hook.disabled:
                line = text("plan_webhook", url=url)
                return PlanItem("change", "webhook", "deal-events", line, text("plan_webhook_disabled"))
            line = text("plan_webhook_events", url=url, events=events)
            return PlanItem("unchanged", "webhook", "deal-events", line)
    return PlanItem("create", "webhook", "deal-events", text("plan_webhook_events", url=url, events=events))


def requirement_for(
    field_id: str, pipeline_id: str, stage_codes: Sequence[str], stage_ids: dict[str, str]
) -> FieldRequirement:
    return FieldRequirement(field_id, pipeline_id, tuple(stage_ids[c] for c in stage_codes))


# --- automations ----------------------------------------------------------------------------------


def _missing_channels(automation: AutomationSpec, accounts: frozenset[str]) -> list[str]:
    """The message actions none of whose channels has an account, as "sms/telegram"."""
    missing = []
    for action in automation.actions:
        if isinstance(action, NotifyAction) and not set(action.channels) & accounts:
            missing.append("/".join(action.channels))
        elif isinstance(action, WebhookAction) and "webhook" not in accounts:
            missing.append("webhook")
    return missing


def _plan_automations(template: FunnelTemplate, ctx: PlanContext) -> list[PlanItem]:
    """Automations run in FunnelSync, not in the CRM: listed so the plan shows everything the funnel
    will do, and flagged "!" when none of a message's channels has an account on this connection."""
    items = []
    for automation in template.automations:
        line = text("plan_automation", name=automation.name.ru)
        missing = [] if ctx.channel_accounts is None else _missing_channels(automation, ctx.channel_accounts)
        if missing:
            why = text("plan_automation_no_account", channels=", ".join(missing))
            items.append(PlanItem("manual", "automation", automation.code, line, why))
        else:
            items.append(
                PlanItem("unchanged", "automation", automation.code, line, text("plan_automation_runs"))
            )
    return items
