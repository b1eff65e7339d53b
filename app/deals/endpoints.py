"""GET /api/deals, /api/deals/{id}; POST /api/deals/{id}/move."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import SessionsDep
from app.connections import service as connections
from app.deals import service
from app.deals.schemas import DealDetail, DealPage
from app.outbox import service as outbox
from app.outbox.endpoints import command_out
from app.outbox.schemas import CommandOut
from app.rules.schemas import SlaBreachOut
from app.rules.service import MoveRefused, request_move
from app.rules.timers import past_sla

router = APIRouter(prefix="/deals", tags=["deals"])


@router.get("")
async def list_deals(
    sessions: SessionsDep,
    connection: str | None = None,
    funnel: Annotated[str | None, Query(description="Template key")] = None,
    stage: Annotated[str | None, Query(description="Stage code")] = None,
    include_deleted: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DealPage:
    async with sessions() as session:
        return await service.list_deals(
            session,
            connection=connection,
            funnel=funnel,
            stage=stage,
            include_deleted=include_deleted,
            limit=limit,
            offset=offset,
        )


@router.get("/late")
async def late_deals(sessions: SessionsDep, connection: str | None = None) -> list[SlaBreachOut]:
    """Deals that have stayed in their stage longer than the stage's SLA, most overdue first."""
    async with sessions() as session:
        connection_id = (await connections.get_connection(session, connection)).id if connection else None
        breaches = await past_sla(session, connection_id=connection_id)
    ordered = sorted(breaches, key=lambda b: b.overdue_by, reverse=True)
    return [SlaBreachOut.model_validate(b, from_attributes=True) for b in ordered]


@router.get("/{deal_id}")
async def get_deal(deal_id: int, sessions: SessionsDep) -> DealDetail:
    async with sessions() as session:
        return await service.get_deal(session, deal_id)


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str = Field(description="Stage code in the deal's funnel, e.g. QUALIFIED")


@router.post("/{deal_id}/move", status_code=status.HTTP_202_ACCEPTED)
async def move_deal(
    deal_id: int,
    body: MoveRequest,
    sessions: SessionsDep,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> CommandOut:
    """Queue a stage change for the CRM; the outbox delivers it (202: accepted, not yet done)."""
    async with sessions.begin() as session:
        try:
            queued = await request_move(session, deal_id, body.stage, request_key=idempotency_key)
        except MoveRefused as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        command, name = await outbox.command_with_connection(session, queued.command_id)
        return command_out(command, name)
