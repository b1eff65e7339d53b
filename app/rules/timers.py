"""Time-driven rules: SLA escalations and follow-up tasks. Each takes `now` so tests drive the clock.

Both are safe to run from several processes at once: every effect has a deterministic idempotency
key, so the second insert of the same escalation or follow-up is dropped by the outbox.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections.models import Connection, ConnectionSwitch
from app.db import utcnow
from app.deals.models import Deal
from app.funnels.models import Funnel
from app.outbox.models import OutboxCommand
from app.outbox.statuses import RuleName
from app.rules.engine import follow_up, sla_deadline, sla_escalation
from app.rules.service import (
    STALE_AFTER,
    FunnelContext,
    TemplateLookup,
    current_entries,
    deal_state,
    enqueue_effects,
    library_template,
    load_funnel,
    previous_follow_ups,
)

# Breaches older than this are not escalated any more (first start against a CRM full of old deals;
# a week-long outage): the API still lists them as past SLA.
SLA_HORIZON = timedelta(days=7)


@dataclass(frozen=True)
class SlaBreach:
    deal_id: int
    crm_deal_id: str
    connection_id: int
    funnel: str  # template key
    stage: str  # stage code
    entry_id: int  # the stage transition that started this stay
    entered_at: datetime
    deadline: datetime
    overdue_by: timedelta
    escalated: bool  # an escalation task is queued (or delivered)


async def _funnels(
    session: AsyncSession, connection_id: int | None, templates: TemplateLookup
) -> AsyncIterator[tuple[Connection, FunnelContext]]:
    query = select(Connection, Funnel.id).join(Funnel, Funnel.connection_id == Connection.id)
    if connection_id is not None:
        query = query.where(Connection.id == connection_id)
    for connection, funnel_id in list(await session.execute(query.order_by(Funnel.id))):
        ctx = await load_funnel(session, connection, funnel_id, templates)
        if ctx is not None:
            yield connection, ctx


async def _deals_in(
    session: AsyncSession, ctx: FunnelContext, code: str, entered_before: datetime | None = None
) -> list[Deal]:
    stage_id = next((sid for sid, c in ctx.codes.items() if c == code), None)
    if stage_id is None:
        return []
    query = select(Deal).where(
        Deal.stage_id == stage_id, Deal.deleted_at.is_(None), Deal.stage_entered_at.is_not(None)
    )
    if entered_before is not None:
        query = query.where(Deal.stage_entered_at <= entered_before)
    return list(await session.scalars(query.order_by(Deal.id)))


async def past_sla(
    session: AsyncSession,
    *,
    connection_id: int | None = None,
    now: datetime | None = None,
    templates: TemplateLookup = library_template,
) -> list[SlaBreach]:
    """Deals that have stayed in their stage longer than the stage's SLA (the API's "late" flag)."""
    now = now or utcnow()
    breaches: list[SlaBreach] = []
    async for connection, ctx in _funnels(session, connection_id, templates):
        for stage in ctx.rules.template.stages:
            if stage.sla is None:
                continue
            deals = await _deals_in(session, ctx, stage.code, now - stage.sla.within)
            entries = await current_entries(session, [d.id for d in deals])
            for deal in deals:
                assert deal.stage_entered_at is not None
                deadline = sla_deadline(stage, deal.stage_entered_at)
                if deadline is None or deadline >= now or deal.id not in entries:
                    continue
                breaches.append(
                    SlaBreach(
                        deal.id,
                        deal.crm_deal_id,
                        connection.id,
                        ctx.rules.template.key,
                        stage.code,
                        entries[deal.id],
                        deal.stage_entered_at,
                        deadline,
                        now - deadline,
                        False,
                    )
                )
    if not breaches:
        return breaches
    escalated = set(
        await session.scalars(
            select(OutboxCommand.stage_entry_id).where(
                OutboxCommand.rule == RuleName.SLA_ESCALATION,
                OutboxCommand.stage_entry_id.in_([b.entry_id for b in breaches]),
            )
        )
    )
    return [replace(b, escalated=b.entry_id in escalated) for b in breaches]


async def check_sla(
    sessions: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    connection_id: int | None = None,
    templates: TemplateLookup = library_template,
    horizon: timedelta = SLA_HORIZON,
) -> int:
    """Queue one escalation task per deal stay that exceeded its stage's SLA; returns how many."""
    now = now or utcnow()
    added = 0
    async with sessions.begin() as session:
        breaches = await past_sla(session, connection_id=connection_id, now=now, templates=templates)
        cache: dict[int, FunnelContext | None] = {}
        for breach in breaches:
            if breach.escalated or breach.deadline < now - horizon:
                continue
            deal = await session.get(Deal, breach.deal_id)
            connection = await session.get(Connection, breach.connection_id)
            if (
                deal is None
                or deal.funnel_id is None
                or connection is None
                or connection.status != ConnectionSwitch.ACTIVE
            ):
                continue
            if deal.funnel_id not in cache:
                cache[deal.funnel_id] = await load_funnel(session, connection, deal.funnel_id, templates)
            ctx = cache[deal.funnel_id]
            if ctx is None:
                continue
            effect = sla_escalation(
                ctx.rules,
                deal_state(deal),
                breach.stage,
                entry_id=breach.entry_id,
                entered_at=breach.entered_at,
                now=now,
            )
            if effect is not None:
                added += await enqueue_effects(session, connection.id, deal.id, [effect])
    return added


async def sweep_follow_ups(
    sessions: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    connection_id: int | None = None,
    templates: TemplateLookup = library_template,
) -> int:
    """Make the follow-up task of every deal in a follow-up stage match its date field: the mirror
    hook sees stage entries only, so a date changed later is picked up here."""
    now = now or utcnow()
    added = 0
    async with sessions.begin() as session:
        async for connection, ctx in _funnels(session, connection_id, templates):
            if connection.status != ConnectionSwitch.ACTIVE:
                continue
            for stage in ctx.rules.template.stages:
                if stage.follow_up is None:
                    continue
                deals = await _deals_in(session, ctx, stage.code)  # CRM clocks may run ahead of ours
                entries = await current_entries(session, [d.id for d in deals])
                previous = await previous_follow_ups(session, entries.values())
                for deal in deals:
                    if deal.id not in entries:
                        continue
                    effects = follow_up(
                        ctx.rules,
                        deal_state(deal),
                        stage.code,
                        entry_id=entries[deal.id],
                        previous=previous.get(entries[deal.id]),
                    )
                    # A date long past is history, not something to remind anyone of now.
                    if effects and datetime.fromisoformat(effects[0].payload["due_at"]) < now - STALE_AFTER:
                        continue
                    added += await enqueue_effects(session, connection.id, deal.id, effects)
    return added


async def run_timers(
    sessions: async_sessionmaker[AsyncSession], *, now: datetime | None = None
) -> tuple[int, int]:
    """The scheduler job body: (escalations queued, follow-up tasks/comments queued)."""
    now = now or utcnow()
    return await check_sla(sessions, now=now), await sweep_follow_ups(sessions, now=now)
