"""Reading the mirror for the API and the dashboard."""

from __future__ import annotations

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.connections.models import Connection
from app.deals.models import Deal, StageTransition, SyncState
from app.deals.schemas import DealCommandOut, DealDetail, DealOut, DealPage, TransitionOut
from app.errors import NotFound
from app.funnels.models import Funnel, FunnelStage
from app.outbox.models import OutboxCommand


class DealNotFound(NotFound):
    pass


def _deal_query() -> Select[Deal, str, str | None, str | None]:
    return (
        select(Deal, Connection.name, Funnel.template_key, FunnelStage.code)
        .join(Connection, Connection.id == Deal.connection_id)
        .join(Funnel, Funnel.id == Deal.funnel_id, isouter=True)
        .join(FunnelStage, FunnelStage.id == Deal.stage_id, isouter=True)
    )


def _out(deal: Deal, connection: str, funnel: str | None, stage: str | None) -> DealOut:
    return DealOut(
        id=deal.id,
        connection=connection,
        crm_deal_id=deal.crm_deal_id,
        funnel=funnel,
        stage=stage,
        crm_pipeline_id=deal.crm_pipeline_id,
        crm_stage_id=deal.crm_stage_id,
        managed=deal.managed,
        title=deal.title,
        amount=deal.amount,
        currency=deal.currency,
        responsible_id=deal.responsible_id,
        crm_updated_at=deal.crm_updated_at,
        stage_entered_at=deal.stage_entered_at,
        deleted=deal.deleted_at is not None,
    )


async def list_deals(
    session: AsyncSession,
    *,
    connection: str | None = None,
    funnel: str | None = None,
    stage: str | None = None,
    include_deleted: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> DealPage:
    query = _deal_query()
    if connection is not None:
        query = query.where(Connection.name == connection)
    if funnel is not None:
        query = query.where(Funnel.template_key == funnel)
    if stage is not None:
        query = query.where(FunnelStage.code == stage)
    if not include_deleted:
        query = query.where(Deal.deleted_at.is_(None))
    total = await session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = await session.execute(
        query.order_by(Deal.crm_updated_at.desc(), Deal.id.desc()).limit(limit).offset(offset)
    )
    return DealPage(total=total, items=[_out(d, c, f, s) for d, c, f, s in rows])


async def get_deal(session: AsyncSession, deal_id: int) -> DealDetail:
    row = (await session.execute(_deal_query().where(Deal.id == deal_id))).first()
    if row is None:
        raise DealNotFound(f"no deal with id {deal_id}")
    deal, connection, funnel, stage = row
    from_stage, to_stage = aliased(FunnelStage), aliased(FunnelStage)
    history = await session.execute(
        select(StageTransition, from_stage.code, to_stage.code)
        .join(from_stage, from_stage.id == StageTransition.from_stage_id, isouter=True)
        .join(to_stage, to_stage.id == StageTransition.to_stage_id, isouter=True)
        .where(StageTransition.deal_id == deal.id)
        .order_by(StageTransition.at, StageTransition.id)
    )
    commands = await session.scalars(
        select(OutboxCommand).where(OutboxCommand.deal_id == deal.id).order_by(OutboxCommand.id)
    )
    return DealDetail(
        **_out(deal, connection, funnel, stage).model_dump(),
        fields=dict(deal.fields),
        commands=[DealCommandOut.model_validate(c, from_attributes=True) for c in commands],
        history=[
            TransitionOut(
                from_crm_stage_id=t.from_crm_stage_id,
                to_crm_stage_id=t.to_crm_stage_id,
                from_stage=f,
                to_stage=to,
                at=t.at,
                source=t.source,
            )
            for t, f, to in history
        ],
    )


async def find_sync_state(session: AsyncSession, connection_id: int) -> SyncState | None:
    """The connection's reconcile cursor and last outcome, None before its first reconcile."""
    return await session.get(SyncState, connection_id)


async def count_live_deals(session: AsyncSession, connection_id: int) -> int:
    """Mirrored deals of the connection that still exist in the CRM."""
    count = await session.scalar(
        select(func.count()).where(Deal.connection_id == connection_id, Deal.deleted_at.is_(None))
    )
    return count or 0


async def unknown_stages(session: AsyncSession, connection_id: int) -> list[tuple[str, str, int]]:
    """(CRM pipeline, CRM stage, live deals) for managed deals whose CRM stage is not in their funnel."""
    rows = await session.execute(
        select(Deal.crm_pipeline_id, Deal.crm_stage_id, func.count())
        .where(
            Deal.connection_id == connection_id,
            Deal.managed.is_(True),
            Deal.stage_id.is_(None),
            Deal.deleted_at.is_(None),
        )
        .group_by(Deal.crm_pipeline_id, Deal.crm_stage_id)
    )
    return [(pipeline, stage, count) for pipeline, stage, count in rows]
