"""Provisioning into both CRM sandboxes over real HTTP, on both databases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from app.funnels.models import Funnel, FunnelMapping, FunnelStage
from connectors.base import Pipeline
from funnel_templates.loader import library
from funnel_templates.schema import FunnelTemplate
from tests.funnels.conftest import Provisioner
from tests.support.matrix import each_crm_on_one_database

TYPICAL = "general.typical"

# Provisioning is about what each CRM does: each CRM once, the databases shared out between them.
pytestmark = each_crm_on_one_database()


def edited(template: FunnelTemplate, change: Any) -> FunnelTemplate:
    data = template.model_dump(mode="json")
    change(data)
    return FunnelTemplate.model_validate(data)


async def crm_pipeline(p: Provisioner, template: FunnelTemplate) -> Pipeline:
    connector = p.sandbox.connector()
    try:
        pipelines = await connector.list_pipelines()
    finally:
        await connector.aclose()
    named = [x for x in pipelines if x.name == template.name.ru]
    assert len(named) == 1, f"expected one pipeline named {template.name.ru!r}, found {len(named)}"
    return named[0]


async def assert_crm_matches(p: Provisioner, template: FunnelTemplate) -> None:
    """The CRM pipeline has exactly the template's stages, in order, and its fields, once each."""
    pipeline = await crm_pipeline(p, template)
    usable = [s for s in sorted(pipeline.stages, key=lambda s: s.sort) if s.editable]
    assert [s.name for s in usable] == [s.name.ru for s in template.stages]
    assert [s.semantics for s in usable] == [s.semantics for s in template.stages]
    connector = p.sandbox.connector()
    try:
        codes = [f.code for f in await connector.list_fields()]
        if p.sandbox.crm == "amocrm" and template.loss_reasons:
            reasons = [r.name for r in await connector.list_loss_reasons()]
            for reason in template.loss_reasons:
                assert reasons.count(reason.name.ru) == 1
    finally:
        await connector.aclose()
    for field in template.fields:
        assert codes.count(field.code) == 1, field.code


async def test_provision_then_rerun_writes_nothing(provisioner: Provisioner) -> None:
    template = library()[TYPICAL]
    first = await provisioner.run(template)
    assert first.applied and first.error is None
    await assert_crm_matches(provisioner, template)

    provisioner.sandbox.reset_stats()
    second = await provisioner.run(template)
    assert second.applied and not second.plan.has_writes
    assert provisioner.sandbox.writes() == 0
    assert {i.action for i in second.plan.items} <= {"unchanged", "unmanaged", "manual"}

    async with provisioner.sessions() as session:
        funnel = await session.scalar(select(Funnel).where(Funnel.template_key == TYPICAL))
        assert funnel is not None and funnel.provisioned_at is not None
        stages = await session.scalar(select(func.count()).where(FunnelStage.funnel_id == funnel.id))
        assert stages == len(template.stages)
        fields = await session.scalar(
            select(func.count()).where(FunnelMapping.funnel_id == funnel.id, FunnelMapping.kind == "field")
        )
        extra = 0 if provisioner.sandbox.crm == "amocrm" else 1  # Bitrix24 loss reasons are a field
        assert fields == len(template.fields) + extra
        # Bitrix24 deal snapshots name user fields by FIELD_NAME: the mapping records it.
        names = {
            m.code: m.crm_name
            for m in await session.scalars(select(FunnelMapping).where(FunnelMapping.kind == "field"))
        }
        if provisioner.sandbox.crm == "bitrix24":
            assert names["next_contact_at"] == "UF_CRM_NEXT_CONTACT_AT"


async def test_dry_run_writes_nothing(provisioner: Provisioner) -> None:
    provisioner.sandbox.reset_stats()
    outcome = await provisioner.run(library()[TYPICAL], dry_run=True)
    assert outcome.dry_run and not outcome.applied and outcome.plan.has_writes
    assert outcome.plan.of("pipeline")[0].action == "create"
    assert provisioner.sandbox.writes() == 0
    async with provisioner.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Funnel)) == 0


async def test_edit_and_rerun_applies_exactly_the_edit(provisioner: Provisioner) -> None:
    original = library()[TYPICAL]
    await provisioner.run(original)

    def change(data: dict[str, Any]) -> None:
        data["stages"][1]["name"]["ru"] = "Новая заявка (входящая)"  # rename
        data["stages"][2]["color"] = "#fff000"  # recolour
        data["stages"].insert(
            3,
            {"code": "CALL_BACK", "name": {"ru": "Перезвонить", "en": "Call back"}, "temperature": "warm",
             "color": "#ffdc7f"},
        )  # fmt: skip
        data["fields"].append(
            {"code": "source_channel", "name": {"ru": "Канал", "en": "Channel"}, "type": "string"}
        )

    template = edited(original, change)
    provisioner.sandbox.reset_stats()
    outcome = await provisioner.run(template)
    assert outcome.applied, outcome.error
    changed = {
        (i.kind, i.code, i.action) for i in outcome.plan.items if i.action in ("create", "change", "delete")
    }
    expected = {
        ("stage", "NEW_REQUEST", "change"),
        ("stage", "QUALIFIED", "change"),
        ("stage", "CALL_BACK", "create"),
        ("field", "source_channel", "create"),
    }
    assert changed == expected, changed
    renamed = outcome.plan.of("stage", "change")
    assert any(i.changes.get("name") == ("Новая заявка", "Новая заявка (входящая)") for i in renamed)
    await assert_crm_matches(provisioner, template)

    provisioner.sandbox.reset_stats()
    again = await provisioner.run(template)
    assert not again.plan.has_writes and provisioner.sandbox.writes() == 0


async def test_reordered_stages_are_reordered(provisioner: Provisioner) -> None:
    original = library()[TYPICAL]
    await provisioner.run(original)
    template = edited(original, lambda d: d["stages"].insert(1, d["stages"].pop(2)))
    outcome = await provisioner.run(template)
    assert outcome.applied and outcome.plan.has_writes
    await assert_crm_matches(provisioner, template)


async def test_removed_stage_is_deleted_only_when_empty(provisioner: Provisioner) -> None:
    original = library()[TYPICAL]
    await provisioner.run(original)
    without_review = edited(original, lambda d: d["stages"].pop(8))  # REVIEW
    plan = (await provisioner.run(without_review, dry_run=True)).plan
    [delete] = plan.of("stage", "delete")
    assert "no longer in the template" in (delete.reason or "")

    # Put a deal in the stage, as a user would: now the plan must refuse to delete it.
    async with provisioner.sessions() as session:
        stage_id = await session.scalar(select(FunnelStage.crm_stage_id).where(FunnelStage.code == "REVIEW"))
        pipeline_id = await session.scalar(select(Funnel.crm_pipeline_id))
    assert stage_id and pipeline_id
    box = provisioner.sandbox.box
    if provisioner.sandbox.crm == "bitrix24":
        box.create_deal(TITLE="Review pending", CATEGORY_ID=int(pipeline_id), STAGE_ID=stage_id)
    else:
        box.create_lead(name="Review pending", pipeline_id=int(pipeline_id), status_id=int(stage_id))
    outcome = await provisioner.run(without_review)
    [blocked] = outcome.plan.of("stage", "blocked")
    assert "holds 1 deal" in (blocked.reason or "")
    pipeline = await crm_pipeline(provisioner, original)
    assert stage_id in {s.id for s in pipeline.stages}


async def test_stage_added_by_hand_is_left_alone(provisioner: Provisioner) -> None:
    template = library()[TYPICAL]
    await provisioner.run(template)
    pipeline = await crm_pipeline(provisioner, template)
    connector = provisioner.sandbox.connector()
    try:
        from connectors.base import NewStage

        [hand] = await connector.add_stages(pipeline.id, [NewStage("HANDMADE", "Ручной этап", 95, "#f2f3f4")])
    finally:
        await connector.aclose()
    provisioner.sandbox.reset_stats()
    outcome = await provisioner.run(template)
    unmanaged = [i for i in outcome.plan.of("stage", "unmanaged") if i.code == hand.id]
    assert unmanaged and "by hand" in (unmanaged[0].reason or "")
    assert provisioner.sandbox.writes() == 0


async def test_failure_midway_then_rerun_completes_without_duplicates(provisioner: Provisioner) -> None:
    template = library()[TYPICAL]
    provisioner.sandbox.fail_next("fields", count=20)
    failed = await provisioner.run(template)
    assert not failed.applied and failed.error
    async with provisioner.sessions() as session:
        funnel = await session.scalar(select(Funnel))
        assert funnel is not None and funnel.crm_pipeline_id is not None  # what was created is recorded
        assert funnel.provisioned_at is None
    provisioner.sandbox.clear_faults()
    done = await provisioner.run(template)
    assert done.applied, done.error
    assert done.plan.of("pipeline")[0].action == "unchanged"
    await assert_crm_matches(provisioner, template)
