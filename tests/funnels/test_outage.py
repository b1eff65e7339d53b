"""Provisioning through a CRM failure at every request of an apply: what the CRM holds of ours is in
the database when the failure surfaces, and the same apply again completes without duplicates."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections.models import Connection
from app.funnels.plan import desired_fields
from app.funnels.repository import load_mapping
from app.funnels.service import ProvisionOutcome, provision
from connectors.base import CRMError
from funnel_templates.loader import library
from funnel_templates.schema import FunnelTemplate
from tests.support.crm import FAST_RETRY, CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.matrix import each_crm_on_one_database

TYPICAL = "general.typical"
# Rate limits are not what this test is about, and it makes about a hundred applies: both sandboxes
# at 50 times the CRMs' real limits.
FAST = 50.0


@dataclass
class Ours:
    """Template objects by template code -> CRM id (pipeline under "")."""

    pipeline: str | None = None
    stages: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    loss_reasons: dict[str, str] = field(default_factory=dict)


def requests_made(box: CRMSandbox) -> int:
    stats = box.box.stats()
    return int(stats["requests"] if box.crm == "bitrix24" else stats["total"])


async def in_crm(box: CRMSandbox, template: FunnelTemplate) -> tuple[Ours, set[str]]:
    """What the CRM holds that is recognisably the template's (by the CRM's identity for each kind),
    and every stage id of that pipeline."""
    connector = box.connector()
    try:
        found = Ours()
        named = [p for p in await connector.list_pipelines() if p.name == template.name.ru]
        assert len(named) <= 1, "a duplicate pipeline"
        stage_ids: set[str] = set()
        if named:
            pipeline = named[0]
            found.pipeline = pipeline.id
            stage_ids = {s.id for s in pipeline.stages}
            pattern = connector.capabilities.stage_id_format
            for spec in template.stages:
                derived = pattern.format(pipeline_id=pipeline.id, code=spec.code) if pattern else None
                matches = [s.id for s in pipeline.stages if s.id == derived or s.name == spec.name.ru]
                assert len(matches) <= 1, f"stage {spec.code} twice"
                if matches:
                    found.stages[spec.code] = matches[0]
        # Bitrix24 keeps loss reasons in an enumeration field: the planner's list, not the template's.
        codes = {f.code for f in desired_fields(template, connector.capabilities)}
        for crm_field in await connector.list_fields():
            if crm_field.code in codes:
                assert crm_field.code not in found.fields, f"field {crm_field.code} twice"
                found.fields[crm_field.code] = crm_field.id
        if connector.capabilities.native_loss_reasons:
            names = {r.name.ru: r.code for r in template.loss_reasons}
            for reason in await connector.list_loss_reasons():
                if reason.name in names:
                    assert names[reason.name] not in found.loss_reasons, f"loss reason {reason.name} twice"
                    found.loss_reasons[names[reason.name]] = reason.id
        return found, stage_ids
    finally:
        await connector.aclose()


async def assert_mapping_is_true(
    box: CRMSandbox, sessions: async_sessionmaker[AsyncSession], record: Connection, template: FunnelTemplate
) -> None:
    """Everything of ours in the CRM is recorded with its id, and nothing recorded is missing."""
    crm, stage_ids = await in_crm(box, template)
    async with sessions() as session:
        db = await load_mapping(session, record.id, template.key)
    assert db.pipeline_id == crm.pipeline
    for code, crm_id in crm.stages.items():
        assert db.stages.get(code) == crm_id, f"stage {code} ({crm_id}) is not recorded"
    assert set(db.stages.values()) <= stage_ids
    assert db.fields == crm.fields
    assert db.loss_reasons == crm.loss_reasons


async def run(
    box: CRMSandbox,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    record: Connection,
    template: FunnelTemplate,
) -> ProvisionOutcome | CRMError:
    connector = box.connector()
    try:
        return await provision(sessions, settings, record, connector, template, dry_run=False)
    except CRMError as exc:  # a failure while reading the CRM for the plan, before any write
        return exc
    finally:
        await connector.aclose()


@pytest.mark.slow  # one whole apply per request of a clean apply
@each_crm_on_one_database()
async def test_a_failure_at_any_request_leaves_a_true_mapping_and_a_rerun_completes(
    crm: str, database_url: str, tmp_path: Path
) -> None:
    template = library()[TYPICAL]
    settings = settings_for(tmp_path, database_url)
    async with open_sessions(database_url) as sessions:
        with crm_sandbox(crm, speed=FAST) as box:  # how many requests a clean apply makes
            record = box.connection(settings, name="clean")
            async with sessions.begin() as session:
                session.add(record)
            box.reset_stats()
            clean = await run(box, sessions, settings, record, template)
            assert isinstance(clean, ProvisionOutcome) and clean.applied
            total = requests_made(box)

        for n in range(total):
            with crm_sandbox(crm, speed=FAST) as box:
                record = box.connection(settings, name=f"at{n}")
                async with sessions.begin() as session:
                    session.add(record)
                # The CRM fails request n+1 and the connector's retries of it (a blip that outlasts
                # one call's retries), then answers again, as after a short outage.
                box.box.fault("http_503", count=FAST_RETRY.attempts, after=n)
                failed = await run(box, sessions, settings, record, template)
                assert isinstance(failed, CRMError) or not failed.applied, f"request {n + 1} did not fail"
                box.clear_faults()
                await assert_mapping_is_true(box, sessions, record, template)

                done = await run(box, sessions, settings, record, template)
                assert isinstance(done, ProvisionOutcome) and done.applied, (n, done)
                await assert_mapping_is_true(box, sessions, record, template)
                crm_now, _ = await in_crm(box, template)
                assert set(crm_now.stages) == {s.code for s in template.stages}
                assert set(crm_now.fields) >= {f.code for f in template.fields}
