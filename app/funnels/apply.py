"""Apply a provisioning plan through a connector, recording every CRM id the moment it exists.

Writes go in the fewest requests the connector can make (stage and field lists are batch-shaped).
After each write the store records what now exists (and commits), so when a later write fails the
next run sees those objects in its mapping and completes the rest without duplicates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from app.funnels.plan import (
    CRMState,
    Plan,
    PlanContext,
    PlanItem,
    StoredMapping,
    plan_provisioning,
    requirement_for,
)
from connectors.base import CRMConnector, CustomField, LossReason, NewField, NewStage, Stage, StageChange
from funnel_templates.schema import FunnelTemplate
from funnel_templates.schema import LossReason as TemplateLossReason


class MappingStore(Protocol):
    """Persists provisioning results; every method commits before returning."""

    async def pipeline(self, pipeline_id: str, *, created: bool) -> None: ...

    async def stages(self, stages: Sequence[tuple[str, Stage]]) -> None: ...

    async def fields(self, fields: Sequence[tuple[str, str, str]]) -> None: ...

    async def loss_reasons(self, reasons: Sequence[tuple[str, str]]) -> None: ...

    async def stages_deleted(self, crm_stage_ids: Sequence[str]) -> None: ...

    async def finished(self) -> None: ...

    async def mapping(self) -> StoredMapping: ...


ReadState = Callable[[], Awaitable[CRMState]]


@dataclass
class ApplyResult:
    plan: Plan  # the plan as finally applied (re-planned after the pipeline was created)
    pipeline_id: str


async def apply_plan(
    plan: Plan,
    template: FunnelTemplate,
    connector: CRMConnector,
    store: MappingStore,
    ctx: PlanContext,
    read_state: ReadState,
) -> ApplyResult:
    pipeline_items = plan.of("pipeline")
    if pipeline_items and pipeline_items[0].action == "create":
        payload = pipeline_items[0].payload
        process = [i.payload for i in plan.of("stage", "create") if i.payload.semantics == "process"]
        created = await connector.create_pipeline(payload["name"], payload["sort"], process)
        await store.pipeline(created.id, created=True)
        # The CRM filled the new pipeline with stages (its defaults, or the embedded ones): plan the
        # stages again against what is really there, reusing them instead of adding clutter.
        plan = plan_provisioning(template, await read_state(), await store.mapping(), ctx)
    elif pipeline_items and plan.pipeline_id is not None:
        await store.pipeline(plan.pipeline_id, created=False)
        if pipeline_items[0].action == "change":
            await connector.rename_pipeline(plan.pipeline_id, pipeline_items[0].payload["name"])
    assert plan.pipeline_id is not None, "a pipeline exists after its creation"
    pipeline_id = plan.pipeline_id

    await _apply_stages(plan, connector, store, pipeline_id)
    await _apply_fields(plan, connector, store)
    await _apply_requirements(plan, connector, store, pipeline_id)
    await _apply_loss_reasons(plan, connector, store)
    await _apply_webhook(plan, connector, ctx)
    await store.finished()
    return ApplyResult(plan, pipeline_id)


async def _apply_stages(plan: Plan, connector: CRMConnector, store: MappingStore, pipeline_id: str) -> None:
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
        created = await connector.add_stages(pipeline_id, new)
        by_code = dict(zip([s.code for s in new], created, strict=True))
        await store.stages(list(by_code.items()))
    deletions: list[Stage] = [i.payload for i in plan.of("stage", "delete")]
    if deletions:
        await connector.delete_stages(deletions)
        await store.stages_deleted([s.id for s in deletions])


async def _apply_fields(plan: Plan, connector: CRMConnector, store: MappingStore) -> None:
    known: list[tuple[str, str, str]] = []
    for item in plan.of("field", "unchanged", "blocked"):
        field: CustomField = item.payload
        known.append((item.code, field.id, field.crm_name))
    await store.fields(known)
    to_create: list[NewField] = [i.payload for i in plan.of("field", "create")]
    if to_create:
        created = await connector.create_fields(to_create)
        await store.fields([(n.code, c.id, c.crm_name) for n, c in zip(to_create, created, strict=True)])


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


async def _apply_loss_reasons(plan: Plan, connector: CRMConnector, store: MappingStore) -> None:
    known: list[tuple[str, str]] = []
    for item in plan.of("loss_reason", "unchanged"):
        found: LossReason = item.payload
        known.append((item.code, found.id))
    await store.loss_reasons(known)
    wanted: list[TemplateLossReason] = [i.payload for i in plan.of("loss_reason", "create")]
    if wanted:
        created = await connector.create_loss_reasons([r.name.ru for r in wanted])
        await store.loss_reasons([(r.code, c.id) for r, c in zip(wanted, created, strict=True)])


async def _apply_webhook(plan: Plan, connector: CRMConnector, ctx: PlanContext) -> None:
    for item in plan.of("webhook", "create", "change"):
        if item.action == "change":  # disabled by the CRM: register again to re-enable
            await connector.unregister_webhook(ctx.webhook_url)
        await connector.register_webhook(ctx.webhook_url, ctx.webhook_events)
