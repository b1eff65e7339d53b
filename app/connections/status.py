"""A connection's sync health in one read: webhooks, inbox lag, reconcile cursor, unknown stages."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import Connection
from app.db import utcnow
from app.deals.models import Deal, SyncState
from app.webhooks.models import InboxEvent
from app.webhooks.service import counts_by_status


class UnknownStage(BaseModel):
    crm_pipeline_id: str
    crm_stage_id: str
    deals: int


class ConnectionStatus(BaseModel):
    name: str
    crm: str
    status: str
    paused_reason: str | None
    last_webhook_at: datetime | None
    inbox_lag_seconds: float
    events: dict[str, int]
    last_reconcile_at: datetime | None
    last_full_reconcile_at: datetime | None
    reconcile_cursor: datetime | None
    reconcile_error: str | None
    deals: int
    unknown_stages: list[UnknownStage]
    # What the webhook check last found and did (amoCRM disables failing destinations).
    webhook: dict[str, str] | None = None
    # When the OAuth access token expires (None: a webhook URL or a long-lived token).
    token_expires_at: datetime | None = None


async def connection_status(session: AsyncSession, record: Connection) -> ConnectionStatus:
    last_webhook = await session.scalar(
        select(func.max(InboxEvent.received_at)).where(InboxEvent.connection_id == record.id)
    )
    oldest_pending = await session.scalar(
        select(func.min(InboxEvent.received_at)).where(
            InboxEvent.connection_id == record.id, InboxEvent.status == "pending"
        )
    )
    sync = await session.get(SyncState, record.id)
    unknown = await session.execute(
        select(Deal.crm_pipeline_id, Deal.crm_stage_id, func.count())
        .where(
            Deal.connection_id == record.id,
            Deal.managed.is_(True),
            Deal.stage_id.is_(None),
            Deal.deleted_at.is_(None),
        )
        .group_by(Deal.crm_pipeline_id, Deal.crm_stage_id)
    )
    deals = await session.scalar(
        select(func.count()).where(Deal.connection_id == record.id, Deal.deleted_at.is_(None))
    )
    lag = (utcnow() - _aware(oldest_pending)).total_seconds() if oldest_pending else 0.0
    return ConnectionStatus(
        name=record.name,
        crm=record.crm,
        status=record.status,
        paused_reason=record.paused_reason,
        last_webhook_at=_aware(last_webhook) if last_webhook else None,
        inbox_lag_seconds=max(lag, 0.0),
        events=await counts_by_status(session, record.id),
        last_reconcile_at=sync.last_run_at if sync else None,
        last_full_reconcile_at=sync.last_full_at if sync else None,
        reconcile_cursor=sync.cursor if sync else None,
        reconcile_error=sync.last_error if sync else None,
        deals=deals or 0,
        webhook=record.settings.get("webhook"),
        token_expires_at=_parse_time(record.settings.get("token_expires_at")),
        unknown_stages=[UnknownStage(crm_pipeline_id=p, crm_stage_id=s, deals=n) for p, s, n in unknown],
    )


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return _aware(datetime.fromisoformat(value))
    except ValueError:  # a hand-edited setting: show nothing rather than fail the overview
        return None


def _aware(value: datetime) -> datetime:
    """Aggregates bypass the column type on SQLite and come back naive (they are UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
