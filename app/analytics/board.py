"""The funnel board (deals per stage, SLA overdue marked) and the commands issued for one deal."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.funnels import FunnelContext
from app.analytics.schemas import Board, BoardColumn, BoardDeal, DealCommand
from app.analytics.service import stage_totals
from app.db import utcnow
from app.deals.models import Deal
from app.outbox.models import OutboxCommand

PER_COLUMN_CAP = 25


def is_overdue(entered_at: datetime | None, sla_seconds: float | None, now: datetime) -> bool:
    if entered_at is None or sla_seconds is None:
        return False
    return now - entered_at > timedelta(seconds=sla_seconds)


async def funnel_board(
    session: AsyncSession, ctx: FunnelContext, *, cap: int = PER_COLUMN_CAP, now: datetime | None = None
) -> Board:
    now = now or utcnow()
    totals = await stage_totals(session, ctx.ref.id)
    columns = []
    for stage in ctx.stages:
        deals, amount = totals.get(stage.id, (0, 0))
        overdue = 0
        if stage.sla_seconds is not None and deals:
            # Counted in SQL so the column total is right even when the list is capped.
            overdue = (
                await session.scalar(
                    select(func.count()).where(
                        Deal.funnel_id == ctx.ref.id,
                        Deal.stage_id == stage.id,
                        Deal.deleted_at.is_(None),
                        Deal.stage_entered_at < now - timedelta(seconds=stage.sla_seconds),
                    )
                )
                or 0
            )
        # One indexed query per column: cheaper than ranking every deal of the funnel in a window.
        listed = (
            list(
                await session.scalars(
                    select(Deal)
                    .where(Deal.funnel_id == ctx.ref.id, Deal.stage_id == stage.id, Deal.deleted_at.is_(None))
                    .order_by(Deal.stage_entered_at.desc(), Deal.id.desc())
                    .limit(cap)
                )
            )
            if deals
            else []
        )
        items = [
            BoardDeal(
                id=d.id,
                crm_deal_id=d.crm_deal_id,
                title=d.title,
                amount=d.amount,
                currency=d.currency,
                responsible_id=d.responsible_id,
                stage_entered_at=d.stage_entered_at,
                overdue=is_overdue(d.stage_entered_at, stage.sla_seconds, now),
            )
            for d in listed
        ]
        columns.append(BoardColumn(stage=stage, deals=deals, amount=amount, overdue=overdue, items=items))
    unknown, _ = totals.get(None, (0, 0))
    return Board(
        funnel=ctx.ref, columns=columns, unknown_stage_deals=unknown, per_column_cap=cap, generated_at=now
    )


async def deal_commands(session: AsyncSession, deal_id: int, limit: int = 200) -> list[DealCommand]:
    rows = await session.scalars(
        select(OutboxCommand)
        .where(OutboxCommand.deal_id == deal_id)
        .order_by(OutboxCommand.created_at.desc(), OutboxCommand.id.desc())
        .limit(limit)
    )
    return [
        DealCommand(
            id=c.id,
            kind=c.kind,
            status=c.status,
            attempts=c.attempts,
            last_error=c.last_error,
            created_at=c.created_at,
            done_at=c.done_at,
        )
        for c in rows
    ]


async def deal_funnel_id(session: AsyncSession, deal_id: int) -> int | None:
    return await session.scalar(select(Deal.funnel_id).where(Deal.id == deal_id))
