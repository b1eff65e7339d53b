"""Provisioning: read the CRM, plan, and (unless dry-run) apply while recording the mapping."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service as connections
from app.connections.check import record_account_id
from app.connections.models import Connection
from app.funnels.apply import apply_plan
from app.funnels.plan import (
    CRMState,
    Plan,
    PlanContext,
    StoredMapping,
    plan_provisioning,
)
from app.funnels.repository import DatabaseMappingStore, load_mapping
from app.funnels.webhook_upkeep import webhook_seen_at
from app.library.service import remember_own_template
from app.messages.accounts import list_accounts
from connectors.base import CRMConnector, CRMError, Stage
from connectors.descriptor import descriptor_for
from funnel_templates.schema import FunnelTemplate


@dataclass
class ProvisionOutcome:
    connection: str
    plan: Plan
    dry_run: bool
    applied: bool
    error: str | None = None
    error_class: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "connection": self.connection,
            "dry_run": self.dry_run,
            "applied": self.applied,
            "error": self.error,
            "error_class": self.error_class,
            "plan": self.plan.as_json(),
        }


def plan_context(settings: Settings, record: Connection, connector: CRMConnector) -> PlanContext:
    auto = connector.capabilities.webhook_registration_api
    return PlanContext(
        crm=record.crm,
        capabilities=connector.capabilities,
        webhook_url=connections.webhook_url(settings, record, reveal_secret=True),
        webhook_events=descriptor_for(record.crm).events_to_subscribe(through_api=auto),
        webhook_auto=auto,
        webhook_display_url=connections.webhook_url(settings, record, reveal_secret=False),
        webhook_seen_at=None if auto else webhook_seen_at(settings, record),
    )


async def read_state(
    connector: CRMConnector, template: FunnelTemplate, mapping: StoredMapping, ctx: PlanContext
) -> CRMState:
    """Everything the planner needs, in as few reads as the CRM allows."""
    caps = ctx.capabilities
    pipelines = await connector.list_pipelines()
    fields = await connector.list_fields()
    loss_reasons = await connector.list_loss_reasons() if caps.native_loss_reasons else None
    webhooks = await connector.list_webhooks() if ctx.webhook_auto else None
    deal_counts: dict[str, int] = {}
    pipeline = next((p for p in pipelines if p.id == mapping.pipeline_id), None)
    if pipeline is not None:
        # Only stages the plan might delete need their deals counted.
        kept = {mapping.stages[s.code] for s in template.stages if s.code in mapping.stages}
        candidates: list[Stage] = [s for s in pipeline.stages if s.id not in kept and s.editable]
        if candidates:
            deal_counts = await connector.count_deals_in_stages(candidates)
    return CRMState(pipelines, fields, loss_reasons, webhooks, deal_counts)


async def provision(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    record: Connection,
    connector: CRMConnector,
    template: FunnelTemplate,
    *,
    dry_run: bool,
    own_text: str | None = None,
) -> ProvisionOutcome:
    """Plan, and apply unless `dry_run`. Raises PlanLimitError before any write when the plan would
    break a CRM limit; a CRM error while applying is returned in the outcome with the CRM's text,
    after everything created so far has been recorded. `own_text` is the YAML of a template that is
    not the library's (a file, an upload): applying keeps it with the connection first."""
    ctx = plan_context(settings, record, connector)
    async with sessions() as session:
        mapping = await load_mapping(session, record.id, template.key)
        accounts = await list_accounts(session, record.id)
    ctx = dataclasses.replace(ctx, channel_accounts=frozenset(a.channel for a in accounts))
    account = await connector.check()  # read with the plan's reads, so a dry run makes the same calls

    async def current_state() -> CRMState:
        async with sessions() as session:
            latest = await load_mapping(session, record.id, template.key)
        return await read_state(connector, template, latest, ctx)

    plan = plan_provisioning(template, await read_state(connector, template, mapping, ctx), mapping, ctx)
    outcome = ProvisionOutcome(record.name, plan, dry_run=dry_run, applied=False)
    if dry_run:
        return outcome
    # Provisioning registers our webhook: from here on a delivery naming another account is refused,
    # so the account id the CRM names is recorded now, as `connections check` does (issue #16).
    await record_account_id(sessions, record, account)
    if own_text is not None:
        await remember_own_template(sessions, record, template, own_text)
    store = DatabaseMappingStore(sessions, record.id, template)
    try:
        await apply_plan(plan, template, connector, store, ctx, current_state)
    except CRMError as exc:
        outcome.error = exc.crm_text
        outcome.error_class = type(exc).__name__
        return outcome
    outcome.applied = True
    return outcome
