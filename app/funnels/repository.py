"""Database access for funnels and their CRM mapping."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import utcnow
from app.deals.loss_reasons import refresh_loss_reasons
from app.funnels.models import Funnel, FunnelMapping, FunnelStage
from app.funnels.plan import StoredMapping
from connectors.base import Stage
from funnel_templates.schema import LOSS_REASON_FIELD, FunnelTemplate


async def find_funnel(session: AsyncSession, connection_id: int, template_key: str) -> Funnel | None:
    return await session.scalar(
        select(Funnel).where(Funnel.connection_id == connection_id, Funnel.template_key == template_key)
    )


async def load_mapping(session: AsyncSession, connection_id: int, template_key: str) -> StoredMapping:
    others = await session.scalars(
        select(Funnel.crm_pipeline_id).where(
            Funnel.connection_id == connection_id,
            Funnel.template_key != template_key,
            Funnel.crm_pipeline_id.is_not(None),
        )
    )
    other_ids = frozenset(p for p in others if p is not None)
    funnel = await find_funnel(session, connection_id, template_key)
    if funnel is None:
        return StoredMapping(other_funnels_pipeline_ids=other_ids)
    stages = await session.scalars(select(FunnelStage).where(FunnelStage.funnel_id == funnel.id))
    rows = list(await session.scalars(select(FunnelMapping).where(FunnelMapping.funnel_id == funnel.id)))
    return StoredMapping(
        pipeline_id=funnel.crm_pipeline_id,
        stages={s.code: s.crm_stage_id for s in stages if s.crm_stage_id},
        fields={r.code: r.crm_id for r in rows if r.kind == "field"},
        loss_reasons={r.code: r.crm_id for r in rows if r.kind == "loss_reason"},
        setting_up_own_pipeline=funnel.created_pipeline and funnel.provisioned_at is None,
        other_funnels_pipeline_ids=other_ids,
    )


class DatabaseMappingStore:
    """MappingStore that commits every recorded step in its own transaction."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], connection_id: int, template: FunnelTemplate
    ) -> None:
        self._sessions = sessions
        self._connection_id = connection_id
        self._template = template

    async def _funnel(self, session: AsyncSession) -> Funnel:
        funnel = await find_funnel(session, self._connection_id, self._template.key)
        if funnel is None:
            funnel = Funnel(
                connection_id=self._connection_id,
                template_key=self._template.key,
                name=self._template.name.ru,
            )
            session.add(funnel)
            await session.flush()
        return funnel

    async def mapping(self) -> StoredMapping:
        async with self._sessions() as session:
            return await load_mapping(session, self._connection_id, self._template.key)

    async def pipeline(self, pipeline_id: str, *, created: bool) -> None:
        async with self._sessions.begin() as session:
            funnel = await self._funnel(session)
            if funnel.crm_pipeline_id != pipeline_id:
                funnel.crm_pipeline_id = pipeline_id
                funnel.created_pipeline = created
                funnel.provisioned_at = None
            funnel.name = self._template.name.ru

    async def stages(self, stages: Sequence[tuple[str, Stage]]) -> None:
        if not stages:
            return
        specs = {s.code: (i, s) for i, s in enumerate(self._template.stages)}
        async with self._sessions.begin() as session:
            funnel = await self._funnel(session)
            existing = {
                s.code: s
                for s in await session.scalars(select(FunnelStage).where(FunnelStage.funnel_id == funnel.id))
            }
            for code, crm_stage in stages:
                index, spec = specs[code]
                row = existing.get(code)
                if row is None:
                    row = FunnelStage(funnel_id=funnel.id, code=code)
                    session.add(row)
                row.name = spec.name.ru
                row.sort = index
                row.semantics = spec.semantics
                row.crm_stage_id = crm_stage.id

    async def stages_deleted(self, crm_stage_ids: Sequence[str]) -> None:
        async with self._sessions.begin() as session:
            funnel = await self._funnel(session)
            await session.execute(
                delete(FunnelStage).where(
                    FunnelStage.funnel_id == funnel.id, FunnelStage.crm_stage_id.in_(list(crm_stage_ids))
                )
            )

    async def _mappings(self, kind: str, pairs: Sequence[tuple[str, str] | tuple[str, str, str]]) -> None:
        if not pairs:
            return
        async with self._sessions.begin() as session:
            funnel = await self._funnel(session)
            rows = {
                r.code: r
                for r in await session.scalars(
                    select(FunnelMapping).where(
                        FunnelMapping.funnel_id == funnel.id, FunnelMapping.kind == kind
                    )
                )
            }
            reason_field_moved = False
            for code, crm_id, *name in pairs:
                row = rows.get(code)
                if row is None:
                    row = FunnelMapping(funnel_id=funnel.id, kind=kind, code=code)
                    session.add(row)
                crm_name = name[0] if name else None
                if (
                    kind == "field"
                    and code == LOSS_REASON_FIELD
                    and (row.crm_id, row.crm_name) != (crm_id, crm_name)
                ):
                    reason_field_moved = True
                row.crm_id = crm_id
                row.crm_name = crm_name
            if reason_field_moved:
                # The funnel's deals carry their reason in another field now (or had one unread).
                await session.flush()
                await refresh_loss_reasons(session, funnel.id)

    async def fields(self, fields: Sequence[tuple[str, str, str]]) -> None:
        """(template code, CRM field id, the field's name in deal snapshots) per field."""
        await self._mappings("field", fields)

    async def loss_reasons(self, reasons: Sequence[tuple[str, str]]) -> None:
        await self._mappings("loss_reason", reasons)

    async def field_options(self, options: Sequence[tuple[str, str]]) -> None:
        """("<field code>:<option code>", the CRM's option id) per enumeration option."""
        await self._mappings("field_option", options)

    async def finished(self) -> None:
        async with self._sessions.begin() as session:
            funnel = await self._funnel(session)
            funnel.provisioned_at = utcnow()
