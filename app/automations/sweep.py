"""The automations sweep: the scheduler job that queues what no event announces when its time comes
(a stalled deal, a date in a deal field, a delayed won/lost action, a recurrence).

Funnels whose template has no automation the sweep can fire are skipped without reading a deal; the
others are read in pages of PAGE_SIZE deals by id, only in the stages where such an automation may
fire, one transaction a page, so a funnel of 100,000 deals never loads at once. Safe to run from
several processes at once: every effect has its idempotency key, so a second insert is dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.automations.actions import ActionQueue, DealAt
from app.automations.engine import DealFacts, allowed_in, due_now
from app.automations.runner import loss_reason_code, outcome_of
from app.connections.models import Connection, ConnectionSwitch
from app.db import utcnow
from app.deals.models import Deal, StageTransition
from app.funnels.models import Funnel
from app.library.service import own_template
from app.rules.service import (
    STALE_AFTER,
    FunnelContext,
    TemplateLookup,
    current_entries,
    library_template,
)
from funnel_templates.automations import (
    AfterDateTrigger,
    BeforeDateTrigger,
    StageEntryTrigger,
    StalledTrigger,
)
from funnel_templates.schema import FunnelTemplate

if TYPE_CHECKING:
    from app.scheduler import Runtime

log = logging.getLogger("funnelsync.automations")
PAGE_SIZE = 500


def sweep_stages(template: FunnelTemplate) -> set[str]:
    """The stages in which a deal may have something due for the sweep: a stalled automation's
    stage, any stage for a date trigger, the closed stages for won/lost/recurring ones (each within
    its only_in_stages). Stage entries are events: the sweep never fires them."""
    closed = {s.code for s in template.stages if s.semantics != "process"}
    stages: set[str] = set()
    for automation in template.automations:
        trigger = automation.trigger
        if isinstance(trigger, StageEntryTrigger):
            continue
        if isinstance(trigger, StalledTrigger):
            candidates = {trigger.stage}
        elif isinstance(trigger, BeforeDateTrigger | AfterDateTrigger):
            candidates = {s.code for s in template.stages}
        else:  # won, lost, recurring: a closed deal
            candidates = closed
        stages |= {code for code in candidates if allowed_in(automation, code)}
    return stages


@dataclass
class SweepOutcome:
    funnels: int = 0  # funnels with something the sweep can fire
    deals: int = 0  # deals evaluated
    enqueued: int = 0  # new outbox commands and messages
    warned: set[str] = field(default_factory=set)  # warnings logged this run (once each)


async def _funnels_to_sweep(
    sessions: async_sessionmaker[AsyncSession], connection_id: int | None, templates: TemplateLookup
) -> list[tuple[int, int]]:
    """(connection id, funnel id) of active connections' funnels whose template has automations the
    sweep can fire; read from the funnel rows and the template alone."""
    query = (
        select(Connection, Funnel.id, Funnel.template_key)
        .join(Connection, Connection.id == Funnel.connection_id)
        .where(Connection.status == ConnectionSwitch.ACTIVE, Funnel.crm_pipeline_id.is_not(None))
    )
    if connection_id is not None:
        query = query.where(Funnel.connection_id == connection_id)
    async with sessions() as session:
        rows = list(await session.execute(query.order_by(Funnel.id)))
    found = []
    for owner, funnel_id, key in rows:
        template = own_template(owner, key) or templates(key)
        if template is not None and sweep_stages(template):
            found.append((owner.id, funnel_id))
    return found


async def sweep_automations(
    sessions: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    connection_id: int | None = None,
    templates: TemplateLookup = library_template,
    page_size: int = PAGE_SIZE,
) -> SweepOutcome:
    """Queue every automation effect due at `now` (and not older than the rules' STALE_AFTER)."""
    now = now or utcnow()
    outcome = SweepOutcome()
    for owner, funnel_id in await _funnels_to_sweep(sessions, connection_id, templates):
        outcome.funnels += 1
        after_id = 0
        while True:
            async with sessions.begin() as session:
                connection = await session.get(Connection, owner)
                if connection is None:
                    break
                queue = ActionQueue(session, connection, now, templates, warned=outcome.warned)
                ctx = await queue.funnels.get(session, funnel_id)
                if ctx is None:
                    break
                deals = await _page(session, ctx, after_id, page_size)
                outcome.deals += len(deals)
                outcome.enqueued += await _sweep_page(queue, ctx, deals)
            if len(deals) < page_size:
                break
            after_id = deals[-1].id
    return outcome


async def _page(session: AsyncSession, ctx: FunnelContext, after_id: int, size: int) -> list[Deal]:
    stages = sweep_stages(ctx.rules.template)
    stage_ids = [stage_id for stage_id, code in ctx.codes.items() if code in stages]
    query = (
        select(Deal)
        .where(
            Deal.funnel_id == ctx.funnel_id,
            Deal.stage_id.in_(stage_ids),
            Deal.deleted_at.is_(None),
            Deal.id > after_id,
        )
        .order_by(Deal.id)
        .limit(size)
    )
    return list(await session.scalars(query))


async def _sweep_page(queue: ActionQueue, ctx: FunnelContext, deals: list[Deal]) -> int:
    session = queue.session
    entries = await current_entries(session, [d.id for d in deals])
    transitions = {
        t.id: t
        for t in await session.scalars(
            select(StageTransition).where(StageTransition.id.in_(list(entries.values())))
        )
    }
    added = 0
    for deal in deals:
        transition = transitions.get(entries.get(deal.id, -1))
        code = ctx.codes.get(deal.stage_id) if deal.stage_id is not None else None
        if transition is None or code is None:
            continue
        at = DealAt(deal, ctx, code, transition.id)
        facts = await deal_facts(session, at, transition.at)
        effects = due_now(ctx.rules, at.state, facts, queue.now, stale_after=STALE_AFTER)
        added += await queue.queue_due(at, effects)
    return added


async def deal_facts(session: AsyncSession, at: DealAt, entered_at: datetime) -> DealFacts:
    """The deal's current entry, and when it was won or lost: its entry into the closed stage it is
    in (the same moment the ingest keyed the closing by)."""
    outcome = outcome_of(at.ctx, at.stage_code)
    return DealFacts(
        stage_code=at.stage_code,
        entered_at=entered_at,
        entry_id=at.entry_id,
        won_at=entered_at if outcome == "won" else None,
        lost_at=entered_at if outcome == "lost" else None,
        loss_reason_code=loss_reason_code(at) if outcome == "lost" else None,
    )


async def run_automations(runtime: Runtime) -> None:
    """The scheduler job body (every FUNNELSYNC_AUTOMATIONS_INTERVAL_SECONDS)."""
    outcome = await sweep_automations(runtime.sessions)
    if outcome.enqueued:
        log.info("automations: %s queued over %s deals", outcome.enqueued, outcome.deals)
