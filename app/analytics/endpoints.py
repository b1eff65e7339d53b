"""/api/analytics: the JSON behind every dashboard page (mounted under the token-protected /api)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from app.analytics import board, overview, service
from app.analytics.funnels import BadPeriod, FunnelNotFound, load_funnel, parse_period
from app.analytics.schemas import Board, Failures, FunnelAnalytics, Overview, RetryableStatus
from app.api.deps import SessionsDep
from app.connections import service as connections
from app.db import utcnow
from app.outbox.statuses import CommandKind

router = APIRouter(prefix="/analytics", tags=["analytics"])

FromQuery = Annotated[
    str | None,
    Query(alias="from", description="Start, inclusive: YYYY-MM-DD or ISO 8601; default to - 30 days"),
]
ToQuery = Annotated[
    str | None, Query(description="End: YYYY-MM-DD (through that day) or ISO 8601 (exclusive); default now")
]


@router.get("/overview")
async def get_overview(sessions: SessionsDep) -> Overview:
    async with sessions() as session:
        return await overview.overview(session)


@router.get("/failures")
async def get_failures(
    sessions: SessionsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    connection: Annotated[
        str | None, Query(description="Connection name: narrows events and commands")
    ] = None,
    kind: Annotated[CommandKind | None, Query(description="Command kind: narrows the commands")] = None,
    status_: Annotated[
        RetryableStatus | None, Query(alias="status", description="failed or dead: narrows the commands")
    ] = None,
) -> Failures:
    async with sessions() as session:
        connection_id = None
        if connection is not None:  # an unknown name is ConnectionNotFound: 404
            connection_id = (await connections.get_connection(session, connection)).id
        return await overview.failures(session, limit, connection_id=connection_id, kind=kind, status=status_)


@router.get("/funnels/{funnel_id}")
async def get_funnel_analytics(
    funnel_id: int, sessions: SessionsDep, from_: FromQuery = None, to: ToQuery = None
) -> FunnelAnalytics:
    try:
        period = parse_period(from_, to, utcnow())
    except BadPeriod as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    async with sessions() as session:
        try:
            ctx = await load_funnel(session, funnel_id)
        except FunnelNotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return await service.funnel_analytics(sessions, ctx, period)


@router.get("/funnels/{funnel_id}/board")
async def get_board(
    funnel_id: int, sessions: SessionsDep, cap: Annotated[int, Query(ge=1, le=500)] = board.PER_COLUMN_CAP
) -> Board:
    async with sessions() as session:
        try:
            ctx = await load_funnel(session, funnel_id)
        except FunnelNotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        return await board.funnel_board(session, ctx, cap=cap)
