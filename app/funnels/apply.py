"""Apply a provisioning plan through a connector, recording every CRM id the moment it exists.

Writes go in the fewest requests the connector can make (stage and field lists are batch-shaped).
After each write the store records what now exists (and commits), so when a later write fails the
next run sees those objects in its mapping and completes the rest without duplicates.

A create that fails can still have created something: a Bitrix24 category whose stages could not be
read back, user fields whose read-back failed, the first commands of a batch or the first chunk of a
bulk POST. Then the CRM is read once more and whatever it now has that is ours (the planner's own
identity rules: pipeline by name, stage by derived id or name, field by code, loss reason by name)
is recorded before the error goes up. When that read fails too (the outage goes on), the next run's
plan adopts those objects by the same rules instead of creating them again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from app.funnels.plan import (
    CRMState,
    Plan,
    PlanContext,
    PlanItem,
    PlanLimitError,
    StoredMapping,
    plan_provisioning,
    requirement_for,
)
from connectors.base import (
    CRMConnector,
    CRMError,
    CustomField,
    LossReason,
    NewField,
    NewStage,
    Pipeline,
    Stage,
    StageChange,
)
from funnel_templates.schema import LOSS_REASON_FIELD, FunnelTemplate
from funnel_templates.schema import LossReason as TemplateLossReason

log = logging.getLogger("funnelsync.provisioning")


class MappingStore(Protocol):
    """Persists provisioning results; every method commits before returning."""

    async def pipeline(self, pipeline_id: str, *, created: bool) -> None: ...

    async def stages(self, stages: Sequence[tuple[str, Stage]]) -> None: ...

    async def fields(self, fields: Sequence[tuple[str, str, str]]) -> None: ...

    async def loss_reasons(self, reasons: Sequence[tuple[str, str]]) -> None: ...

    async def field_options(self, options: Sequence[tuple[str, str]]) -> None: ...

    async def stages_deleted(self, crm_stage_ids: Sequence[str]) -> None: ...

    async def finished(self) -> None: ...

    async def mapping(self) -> StoredMapping: ...


ReadState = Callable[[], Awaitable[CRMState]]


@dataclass
class ApplyResult:
    plan: Plan  # the plan as finally applied (re-planned after the pipeline was created)
    pipeline_id: str


class _Creating:
    """Remembers whether the write in flight creates objects, so a failure knows whether the CRM
    may now hold objects the store has not recorded."""

    def __init__(self) -> None:
        self.active = False
        self.pipeline = False

    def __call__(self, *, pipeline: bool = False) -> _Creating:
        self.pipeline = pipeline
        return self

    def __enter__(self) -> None:
        self.active = True

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None:  # left set when the create failed: the error handler reads it
            self.active = False


async def apply_plan(
    plan: Plan,
    template: FunnelTemplate,
    connector: CRMConnector,
    store: MappingStore,
    ctx: PlanContext,
    read_state: ReadState,
) -> ApplyResult:
    creating = _Creating()
    try:
        return await _apply(plan, template, connector, store, ctx, read_state, creating)
    except CRMError:
        if creating.active:
            await _record_what_exists(template, store, ctx, read_state, created_pipeline=creating.pipeline)
        raise


async def _record_what_exists(
    template: FunnelTemplate,
    store: MappingStore,
    ctx: PlanContext,
    read_state: ReadState,
    *,
    created_pipeline: bool,
) -> None:
    """After a failed create: read the CRM once and record what of ours it holds. Best effort: a
    failing read is logged and the caller re-raises the original error."""
    try:
        mapping = await store.mapping()
        plan = plan_provisioning(template, await read_state(), mapping, ctx)
    except (CRMError, PlanLimitError) as exc:
        # The original error matters more than this one: it goes up, this one is only logged.
        log.warning(
            "provisioning %s: could not re-read the CRM after a failed create (%s: %s); the next run "
            "adopts what was created",
            template.key,
            type(exc).__name__,
            exc.crm_text if isinstance(exc, CRMError) else exc,
        )
        return
    if plan.pipeline_id is None:
        return
    if mapping.pipeline_id is None:
        # Found by name: this run planned a create because no such pipeline existed, so it is ours.
        await store.pipeline(plan.pipeline_id, created=created_pipeline)
    await store.stages([(i.code, i.payload[1]) for i in plan.of("stage", "change", "unchanged")])
    await _record_fields(
        store, template, [(i.code, i.payload) for i in plan.of("field", "unchanged", "blocked")]
    )
    await store.loss_reasons([(i.code, i.payload.id) for i in plan.of("loss_reason", "unchanged")])


async def _apply(
    plan: Plan,
    template: FunnelTemplate,
    connector: CRMConnector,
    store: MappingStore,
    ctx: PlanContext,
    read_state: ReadState,
    creating: _Creating,
) -> ApplyResult:
    pipeline_items = plan.of("pipeline")
    if pipeline_items and pipeline_items[0].action == "create":
        payload = pipeline_items[0].payload
        process = [i.payload for i in plan.of("stage", "create") if i.payload.semantics == "process"]
        with creating(pipeline=True):
            created = await connector.create_pipeline(payload["name"], payload["sort"], process)
        await store.pipeline(created.id, created=True)
        # The stages it was created with (amoCRM: ours, embedded; Bitrix24: its defaults, of which
        # WON/LOSE carry our codes) are recorded now, before the re-read below can fail.
        await store.stages(_stages_by_identity(template, created, ctx))
        # The CRM filled the new pipeline with stages (its defaults, or the embedded ones): plan the
        # stages again against what is really there, reusing them instead of adding clutter.
        plan = plan_provisioning(template, await read_state(), await store.mapping(), ctx)
    elif pipeline_items and plan.pipeline_id is not None:
        await store.pipeline(plan.pipeline_id, created=False)
        if pipeline_items[0].action == "change":
            await connector.rename_pipeline(plan.pipeline_id, pipeline_items[0].payload["name"])
    assert plan.pipeline_id is not None, "a pipeline exists after its creation"
    pipeline_id = plan.pipeline_id

    await _apply_stages(plan, connector, store, pipeline_id, creating)
    await _apply_fields(plan, template, connector, store, creating)
    await _apply_requirements(plan, connector, store, pipeline_id)
    await _apply_loss_reasons(plan, connector, store, creating)
    await _apply_webhook(plan, connector, ctx)
    await store.finished()
    return ApplyResult(plan, pipeline_id)


def _stages_by_identity(
    template: FunnelTemplate, pipeline: Pipeline, ctx: PlanContext
) -> list[tuple[str, Stage]]:
    """Template stages the pipeline already has, by the CRM's identity for them: the id it derives
    from our code (Bitrix24 "C5:CODE") or the exact name, with the same semantics."""
    pattern = ctx.capabilities.stage_id_format
    found: list[tuple[str, Stage]] = []
    taken: set[str] = set()
    for spec in template.stages:
        derived = pattern.format(pipeline_id=pipeline.id, code=spec.code) if pattern else None
        for stage in pipeline.stages:
            if (
                stage.id not in taken
                and stage.semantics == spec.semantics
                and (stage.id == derived or stage.name == spec.name.ru)
            ):
                found.append((spec.code, stage))
                taken.add(stage.id)
                break
    return found


async def _apply_stages(
    plan: Plan, connector: CRMConnector, store: MappingStore, pipeline_id: str, creating: _Creating
) -> None:
    existing: list[tuple[str, Stage]] = []
    changes: list[StageChange] = []
    for item in plan.of("stage", "change", "unchanged"):
        change, stage = item.payload
        existing.append((item.code, stage))
        if change is not None:
            changes.append(change)
    # Record reused stages first: they exist whatever happens to the writes below.
    await store.stages(existing)
    if changes:
        await connector.update_stages(changes)
    to_create: list[PlanItem] = plan.of("stage", "create")
    if to_create:
        new: list[NewStage] = [i.payload for i in to_create]
        with creating():
            created = await connector.add_stages(pipeline_id, new)
        by_code = dict(zip([s.code for s in new], created, strict=True))
        await store.stages(list(by_code.items()))
    deletions: list[Stage] = [i.payload for i in plan.of("stage", "delete")]
    if deletions:
        await connector.delete_stages(deletions)
        await store.stages_deleted([s.id for s in deletions])


async def _apply_fields(
    plan: Plan, template: FunnelTemplate, connector: CRMConnector, store: MappingStore, creating: _Creating
) -> None:
    known: list[tuple[str, CustomField]] = [
        (i.code, i.payload) for i in plan.of("field", "unchanged", "blocked")
    ]
    await _record_fields(store, template, known)
    to_create: list[NewField] = [i.payload for i in plan.of("field", "create")]
    if to_create:
        with creating():
            created = await connector.create_fields(to_create)
        await _record_fields(store, template, [(n.code, c) for n, c in zip(to_create, created, strict=True)])


async def _record_fields(
    store: MappingStore, template: FunnelTemplate, fields: Sequence[tuple[str, CustomField]]
) -> None:
    """The fields by template code, and their enumeration options' ids."""
    await store.fields([(code, field.id, field.crm_name) for code, field in fields])
    await store.field_options([o for code, field in fields for o in option_mappings(template, code, field)])


def option_mappings(template: FunnelTemplate, code: str, field: CustomField) -> list[tuple[str, str]]:
    """The field's enumeration options the template names, by the CRM's option id: a deal carries
    the id (a Bitrix24 list item; an amoCRM enum_id), and Bitrix24 takes nothing else in a write.
    The loss-reason field's options are the template's loss reasons."""
    if code == LOSS_REASON_FIELD:
        wanted = [(r.code, r.name.ru) for r in template.loss_reasons]
    else:
        spec = next((f for f in template.fields if f.code == code), None)
        wanted = [(o.code, o.name.ru) for o in spec.options] if spec else []
    ids = {option.value: option.id for option in field.options}
    return [(f"{code}:{option}", ids[name]) for option, name in wanted if name in ids]


async def _apply_requirements(
    plan: Plan, connector: CRMConnector, store: MappingStore, pipeline_id: str
) -> None:
    items = plan.of("requirement", "create", "change")
    if not items:
        return
    mapping = await store.mapping()
    requirements = [
        requirement_for(mapping.fields[item.code], pipeline_id, item.payload, mapping.stages)
        for item in items
    ]
    await connector.set_field_requirements(requirements)


async def _apply_loss_reasons(
    plan: Plan, connector: CRMConnector, store: MappingStore, creating: _Creating
) -> None:
    known: list[tuple[str, str]] = []
    for item in plan.of("loss_reason", "unchanged"):
        found: LossReason = item.payload
        known.append((item.code, found.id))
    await store.loss_reasons(known)
    wanted: list[TemplateLossReason] = [i.payload for i in plan.of("loss_reason", "create")]
    if wanted:
        with creating():
            created = await connector.create_loss_reasons([r.name.ru for r in wanted])
        await store.loss_reasons([(r.code, c.id) for r, c in zip(wanted, created, strict=True)])


async def _apply_webhook(plan: Plan, connector: CRMConnector, ctx: PlanContext) -> None:
    for item in plan.of("webhook", "create", "change"):
        if item.action == "change":  # disabled by the CRM: register again to re-enable
            await connector.unregister_webhook(ctx.webhook_url)
        await connector.register_webhook(ctx.webhook_url, ctx.webhook_events)
