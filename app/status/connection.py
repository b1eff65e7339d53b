"""A connection's sync health in one read: webhooks, inbox lag, reconcile cursor, unknown stages.

Moved out of app/connections: it reads the inbox and the deal mirror, which sit above connections."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.connector import (
    LAPSE_WARNING,
    PREVIOUS_DOMAINS,
    domain_of,
    refresh_token_lapses_at,
)
from app.connections.health import ConnectionHealth, health_of
from app.connections.models import Connection, ConnectionSwitch
from app.db import utcnow
from app.deals import service as deals
from app.webhooks import service as inbox


class UnknownStage(BaseModel):
    crm_pipeline_id: str
    crm_stage_id: str
    deals: int


class ConnectionStatus(BaseModel):
    name: str
    crm: str
    status: ConnectionSwitch
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
    # When the OAuth refresh token lapses unless used before (None: no refresh token, or not yet
    # known), and a warning from LAPSE_WARNING before that.
    refresh_token_lapses_at: datetime | None = None
    token_warning: str | None = None
    # The portal (Bitrix24) or subdomain (amoCRM) now, and the ones it had before a rename.
    domain: str | None = None
    previous_domains: list[dict[str, str]] = []
    # active | degraded | unreachable | paused, from the last successful CRM call and push and the
    # failures since (app/connections/health.py); `status` stays the stored active/paused switch.
    health: ConnectionHealth


async def connection_status(session: AsyncSession, record: Connection) -> ConnectionStatus:
    last_webhook = await inbox.last_received_at(session, record.id)
    oldest_pending = await inbox.oldest_pending_at(session, record.id)
    sync = await deals.find_sync_state(session, record.id)
    unknown = await deals.unknown_stages(session, record.id)
    live_deals = await deals.count_live_deals(session, record.id)
    lag = (utcnow() - _aware(oldest_pending)).total_seconds() if oldest_pending else 0.0
    lapses = refresh_token_lapses_at(record)
    return ConnectionStatus(
        name=record.name,
        crm=record.crm,
        status=record.status,
        paused_reason=record.paused_reason,
        last_webhook_at=_aware(last_webhook) if last_webhook else None,
        inbox_lag_seconds=max(lag, 0.0),
        events=await inbox.counts_by_status(session, record.id),
        last_reconcile_at=sync.last_run_at if sync else None,
        last_full_reconcile_at=sync.last_full_at if sync else None,
        reconcile_cursor=sync.cursor if sync else None,
        reconcile_error=sync.last_error if sync else None,
        deals=live_deals,
        webhook=record.settings.get("webhook"),
        token_expires_at=_parse_time(record.settings.get("token_expires_at")),
        refresh_token_lapses_at=lapses,
        token_warning=_lapse_warning(lapses),
        domain=domain_of(record),
        previous_domains=[
            {str(k): str(v) for k, v in entry.items()}
            for entry in record.settings.get(PREVIOUS_DOMAINS) or []
            if isinstance(entry, dict)
        ],
        unknown_stages=[UnknownStage(crm_pipeline_id=p, crm_stage_id=s, deals=n) for p, s, n in unknown],
        health=health_of(record),
    )


def _lapse_warning(lapses: datetime | None) -> str | None:
    if lapses is None:
        return None
    left = lapses - utcnow()
    if left <= timedelta(0):
        return (
            f"the OAuth refresh token lapsed on {lapses:%Y-%m-%d %H:%M} UTC: re-authorize the app "
            "and store its new tokens in the connection"
        )
    if left <= LAPSE_WARNING:
        return (
            f"the OAuth refresh token lapses on {lapses:%Y-%m-%d %H:%M} UTC (in {left.days} days) unless "
            "a refresh succeeds before: check that the worker runs and the connection is not paused, "
            "or re-authorize the app"
        )
    return None


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
