"""GET /api/deals and /api/deals/{id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import SessionsDep
from app.deals import service
from app.deals.schemas import DealDetail, DealPage

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


@router.get("/{deal_id}")
async def get_deal(deal_id: int, sessions: SessionsDep) -> DealDetail:
    async with sessions() as session:
        return await service.get_deal(session, deal_id)
