"""A funnel with its stages in template order, enriched from the template, and the period parser."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.schemas import FunnelRef, Period, StageInfo
from app.connections.models import Connection
from app.funnels.models import Funnel, FunnelStage
from app.library.service import template_for
from funnel_templates.schema import FunnelTemplate

DEFAULT_PERIOD = timedelta(days=30)


class FunnelNotFound(LookupError):
    pass


class BadPeriod(ValueError):
    pass


@dataclass(frozen=True)
class FunnelContext:
    ref: FunnelRef
    template: FunnelTemplate | None
    stages: list[StageInfo]  # template order (the stored sort)

    def stage(self, stage_id: int) -> StageInfo | None:
        return next((s for s in self.stages if s.id == stage_id), None)

    @property
    def success(self) -> StageInfo | None:
        return next((s for s in self.stages if s.semantics == "success"), None)


async def load_funnel(session: AsyncSession, funnel_id: int) -> FunnelContext:
    row = (
        await session.execute(
            select(Funnel, Connection)
            .join(Connection, Connection.id == Funnel.connection_id)
            .where(Funnel.id == funnel_id)
        )
    ).first()
    if row is None:
        raise FunnelNotFound(f"no funnel with id {funnel_id}")
    funnel, record = row
    connection = record.name
    # None for a template removed from the library: show what the database knows.
    template: FunnelTemplate | None = template_for(record, funnel.template_key)
    specs = {s.code: s for s in template.stages} if template else {}
    rows = await session.scalars(
        select(FunnelStage)
        .where(FunnelStage.funnel_id == funnel_id)
        .order_by(FunnelStage.sort, FunnelStage.id)
    )
    stages = []
    for stage in rows:
        spec = specs.get(stage.code)
        stages.append(
            StageInfo(
                id=stage.id,
                code=stage.code,
                sort=stage.sort,
                # The template's Russian name is the canonical one; the row holds what was provisioned.
                name_ru=spec.name.ru if spec else stage.name,
                name_en=spec.name.en if spec else None,
                semantics=stage.semantics,
                temperature=spec.temperature if spec else None,
                color=spec.color if spec else None,
                sla_seconds=spec.sla.within.total_seconds() if spec and spec.sla else None,
            )
        )
    ref = FunnelRef(id=funnel.id, name=funnel.name, template_key=funnel.template_key, connection=connection)
    return FunnelContext(ref=ref, template=template, stages=stages)


def _parse_bound(value: str, name: str, *, end: bool) -> datetime:
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            # A bare date as the end of the period means "through that day".
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1) if end else moment
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadPeriod(f"{name}={value!r} is not a date (YYYY-MM-DD) or an ISO 8601 date-time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_period(start: str | None, end: str | None, now: datetime) -> Period:
    """from/to query values -> [start, end); the default is the last 30 days up to now."""
    end_at = _parse_bound(end, "to", end=True) if end else now
    start_at = _parse_bound(start, "from", end=False) if start else end_at - DEFAULT_PERIOD
    if start_at >= end_at:
        raise BadPeriod(
            f"the period is empty: from {start_at.isoformat()} is not before to {end_at.isoformat()}"
        )
    return Period(start=start_at, end=end_at)
