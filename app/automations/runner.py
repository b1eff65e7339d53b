"""Template automations in the running service: stage entries at ingest, the rest by the sweep.

`apply_automations` runs inside the ingest transaction right after the rules (app.deals.ingest), on
the same stage entries the rules see (app.rules.service.live_stage_entries: the deal's latest
transition, made by a person, not stale). An entry into a stage fires its stage_entry automations;
an entry into a won or lost stage also its won/lost ones. What is due now is queued at once; what
is due later (a stalled nudge, a delayed won/lost action) and whatever no event announces (dates in
deal fields, recurrences) is queued by the sweep (app.automations.sweep) once its time comes. Both
paths give an occurrence the same idempotency key, so whichever queues it first wins and the other
adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.automations.actions import ActionQueue, DealAt
from app.automations.engine import AutomationEffect, Outcome, on_closed, on_stage_entry
from app.connections.models import Connection
from app.db import utcnow
from app.deals.mirror import MirrorResult
from app.deals.models import Deal, StageTransition
from app.outbox.models import OutboxCommand
from app.outbox.statuses import RuleName
from app.rules.engine import option_code
from app.rules.service import (
    FunnelContext,
    TemplateLookup,
    library_template,
    live_stage_entries,
)
from funnel_templates.schema import LOSS_REASON_FIELD

OUTCOMES: dict[str, Outcome] = {"success": "won", "failure": "lost"}


@dataclass
class AutomationsOutcome:
    evaluated: int = 0  # stage entries into a funnel with automations
    enqueued: int = 0  # new outbox commands and messages


def outcome_of(ctx: FunnelContext, stage_code: str) -> Outcome | None:
    """ "won"/"lost" for the funnel's success/failure stages, None for a process stage."""
    return OUTCOMES.get(ctx.rules.template.stage(stage_code).semantics)


def loss_reason_code(at: DealAt) -> str | None:
    """The template's code of the deal's loss reason: the value the mirror keeps in
    deals.loss_reason (amoCRM loss_reason_id, the Bitrix24 enumeration's list item), mapped back by
    the funnel's recorded ids, or a value that already is a code or a reason's name."""
    return option_code(at.ctx.rules, LOSS_REASON_FIELD, at.deal.loss_reason)


async def closing_effects(
    session: AsyncSession, at: DealAt, entered_at: datetime, now: datetime
) -> list[AutomationEffect]:
    """The won/lost automations of an entry into a closed stage (none for a process stage)."""
    outcome = outcome_of(at.ctx, at.stage_code)
    if outcome is None:
        return []
    return on_closed(
        at.ctx.rules,
        at.state,
        outcome,
        closed_at=entered_at,
        loss_reason_code=loss_reason_code(at) if outcome == "lost" else None,
        stage_code=at.stage_code,
        now=now,
    )


async def reverted_entries(session: AsyncSession, entry_ids: Sequence[int]) -> set[int]:
    """Entries the rules answered with a move back (required fields empty): the deal does not stay,
    so its automations do not fire (a lost deal without its reason is no win-back candidate)."""
    if not entry_ids:
        return set()
    rows = await session.scalars(
        select(OutboxCommand.stage_entry_id).where(
            OutboxCommand.rule == RuleName.REVERT_MOVE, OutboxCommand.stage_entry_id.in_(list(entry_ids))
        )
    )
    return {entry_id for entry_id in rows if entry_id is not None}


async def apply_automations(
    session: AsyncSession,
    connection: Connection,
    mirrored: MirrorResult,
    now: datetime | None = None,
    *,
    templates: TemplateLookup = library_template,
) -> AutomationsOutcome:
    """Queue what the batch's stage entries fire now (called by app.deals.ingest, after the rules,
    in the caller's transaction; never commits)."""
    now = now or utcnow()
    outcome = AutomationsOutcome()
    live = await live_stage_entries(session, mirrored, now)
    reverted = await reverted_entries(session, [t.id for _, t in live.entries])
    queue = ActionQueue(session, connection, now, templates)
    for deal, transition in live.entries:
        at = await _deal_at(queue, deal, transition)
        if at is None or transition.id in reverted:
            continue
        effects = on_stage_entry(
            at.ctx.rules, at.state, at.stage_code, entry_id=transition.id, now=now, entered_at=transition.at
        )
        effects += await closing_effects(session, at, transition.at, now)
        outcome.evaluated += 1
        outcome.enqueued += await queue.queue_due(at, effects)
    return outcome


async def _deal_at(queue: ActionQueue, deal: Deal, transition: StageTransition) -> DealAt | None:
    """The entry as the actions see it, or None when its funnel has no automations (or is not ours)."""
    ctx = await queue.funnels.get(queue.session, deal.funnel_id) if deal.funnel_id is not None else None
    if ctx is None or not ctx.rules.template.automations or transition.to_stage_id is None:
        return None
    code = ctx.codes.get(transition.to_stage_id)
    return DealAt(deal, ctx, code, transition.id) if code is not None else None
