"""Manual stage moves requested through the API: validated here, delivered by the outbox."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.deals.models import Deal
from app.deals.service import DealNotFound
from app.funnels.models import FunnelStage
from app.outbox.models import OutboxCommand
from app.outbox.service import enqueue


class MoveRefused(ValueError):
    """The move cannot be asked of the CRM (unmanaged or deleted deal, unknown stage)."""


async def request_move(
    session: AsyncSession, deal_id: int, stage_code: str, idempotency_key: str | None = None
) -> OutboxCommand:
    deal = await session.get(Deal, deal_id)
    if deal is None:
        raise DealNotFound(f"no deal with id {deal_id}")
    if deal.deleted_at is not None:
        raise MoveRefused(f"deal {deal_id} was deleted in the CRM")
    if deal.funnel_id is None:
        raise MoveRefused(
            f"deal {deal_id} is in pipeline {deal.crm_pipeline_id}, which FunnelSync does not manage"
        )
    stages = {
        s.code: s
        for s in await session.scalars(select(FunnelStage).where(FunnelStage.funnel_id == deal.funnel_id))
    }
    target = stages.get(stage_code)
    if target is None or target.crm_stage_id is None:
        raise MoveRefused(f"unknown stage {stage_code!r} for this deal's funnel; stages: {', '.join(stages)}")
    # One request = one move: a client retrying the same request (same Idempotency-Key) moves once.
    key = f"manual-move:{deal.id}:{idempotency_key or uuid.uuid4().hex}"
    await enqueue(
        session,
        connection_id=deal.connection_id,
        kind="move",
        deal_id=deal.id,
        idempotency_key=key,
        payload={
            "crm_deal_id": deal.crm_deal_id,
            "pipeline_id": deal.crm_pipeline_id,
            "stage_id": target.crm_stage_id,
            "stage_code": stage_code,
            "reason": "manual",
        },
    )
    command = await session.scalar(select(OutboxCommand).where(OutboxCommand.idempotency_key == key))
    assert command is not None
    return command
