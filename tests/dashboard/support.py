"""Build the app with the dashboard and analytics routers, seed a small funnel, log in over HTTP.

The seeded data is small enough to compute every expected number by hand (see tests/analytics)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import SecretStr
from sqlalchemy import select

from app.analytics.endpoints import router as analytics_router
from app.config import Settings
from app.connections.models import Connection
from app.dashboard.pages import router as pages_router
from app.db import utcnow
from app.deals.mirror import load_stage_index, mirror_snapshots, tombstone
from app.deals.models import Deal
from app.funnels.models import Funnel, FunnelMapping, FunnelStage
from app.library.service import get_template
from app.main import create_app
from app.outbox.models import OutboxCommand
from app.security import require_api_token
from app.webhooks.models import InboxEvent
from connectors.base import DealSnapshot
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

TOKEN = "dashboard-test-token"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
TEMPLATE = "general.typical"
FAILED_EVENT_ERROR = "cannot parse webhook: data[FIELDS][ID] is missing"
FAILED_EVENT_BODY = b"event=ONCRMDEALUPDATE&data%5BFIELDS%5D%5BXX%5D=1&ts=1762000000"
CRM_ERROR_FAILED = "QUERY_LIMIT_EXCEEDED: Too many requests"
CRM_ERROR_DEAD = "ERROR_CORE: Stage C5:GONE not found"


def build_app(settings: Settings) -> FastAPI:
    """create_app() plus the two routers, unless app/main.py already wires them."""
    app = create_app(settings)
    paths = {getattr(route, "path", None) for route in app.routes}
    if "/api/analytics/overview" not in paths:
        app.include_router(analytics_router, prefix="/api", dependencies=[Depends(require_api_token)])
    if "/failures" not in paths:
        app.include_router(pages_router)
    return app


@contextmanager
def dashboard_server(database_url: str, tmp_path: Path) -> Iterator[str]:
    settings = Settings(
        database_url=database_url, api_token=SecretStr(TOKEN), data_dir=tmp_path, scheduler_enabled=False
    )
    with serve_asgi(build_app(settings)) as url:
        yield url


def login(client: httpx.Client) -> None:
    response = client.post("/login", data={"token": TOKEN, "next": "/"})
    assert response.status_code == 303, response.text


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


@dataclass
class Seeded:
    funnel_id: int
    empty_funnel_id: int
    connection_id: int
    deals: dict[str, int]  # crm deal id -> local id
    stages: dict[str, int]  # stage code -> stage id


def snap(deal: str, code: str, minutes: float, amount: str | None = None, **extra: object) -> DealSnapshot:
    return DealSnapshot(
        id=deal,
        pipeline_id="5",
        stage_id=f"C5:{code}",
        title=f"Deal {deal}",
        updated_at=T0 + timedelta(minutes=minutes),
        amount=Decimal(amount) if amount is not None else None,
        **extra,  # type: ignore[arg-type]
    )


def _snapshots(now: datetime) -> list[DealSnapshot]:
    future = (now - T0).total_seconds() / 60 + 60  # an hour ahead of now: inside any SLA
    return [
        # 1: won
        snap("1", "NEW_REQUEST", 0, "1000"),
        snap("1", "QUALIFIED", 10, "1000"),
        snap("1", "OFFER_SENT", 70, "1000"),
        snap("1", "WON", 190, "1000"),
        # 2: qualified, then lost for a reason given by template code
        snap("2", "NEW_REQUEST", 0, "500"),
        snap("2", "QUALIFIED", 30, "500"),
        snap("2", "LOST", 120, "500", fields={"loss_reason": "spam"}),
        # 3: lost with an amoCRM-style reason id mapped to `bought_elsewhere`
        snap("3", "NEW_REQUEST", 0, "200"),
        snap("3", "LOST", 20, "200", loss_reason_id="777"),
        # 4: still a new request, long past the 2-minute SLA
        snap("4", "NEW_REQUEST", 0, "300"),
        # 5: a new request that arrived "now" (within its SLA)
        snap("5", "NEW_REQUEST", future, "400"),
        # 6: a lead lost without a reason
        snap("6", "LEADS", 0),
        snap("6", "LOST", 5),
        # 7: entered before the analysed period
        snap("7", "NEW_REQUEST", -10 * 1440, "700"),
        snap("7", "QUALIFIED", -10 * 1440 + 5, "700"),
        # 8: lost with the Bitrix24 reason field's list item for `spam` (its ID, keyed by the field's name)
        snap("8", "NEW_REQUEST", 0, "50"),
        snap("8", "LOST", 15, "50", fields={"UF_CRM_LOSS": "45"}),
        # 9: in a stage the funnel does not map
        snap("9", "UC_HAND", 0),
        # 10: deleted later; counted nowhere
        snap("10", "NEW_REQUEST", 0, "9999"),
    ]


async def _seed(url: str) -> Seeded:
    template = get_template(TEMPLATE)
    async with open_sessions(url) as sessions:
        async with sessions.begin() as session:
            b24 = Connection(
                name="b24", crm="bitrix24", base_url="http://127.0.0.1/", credentials_encrypted="x"
            )
            amo = Connection(
                name="amo",
                crm="amocrm",
                base_url="http://127.0.0.1/",
                credentials_encrypted="x",
                status="paused",
                paused_reason="amoCRM refused the refresh token",
                settings={
                    "token_expires_at": (T0 - timedelta(hours=1)).isoformat(),
                    "webhook": {"status": "re-enabled", "at": T0.isoformat()},
                },
            )
            session.add_all([b24, amo])
            await session.flush()
            funnel = Funnel(connection_id=b24.id, template_key=TEMPLATE, name="Sales", crm_pipeline_id="5")
            # A funnel no deal has reached yet; its stages come from a template no longer shipped.
            empty = Funnel(connection_id=amo.id, template_key="gone.away", name="Empty", crm_pipeline_id="77")
            session.add_all([funnel, empty])
            await session.flush()
            session.add(
                FunnelStage(funnel_id=empty.id, code="NEW", name="Новая", sort=0, semantics="process")
            )
            session.add(
                FunnelStage(funnel_id=empty.id, code="WON", name="Успех", sort=1, semantics="success")
            )
            session.add(
                FunnelStage(funnel_id=empty.id, code="LOST", name="Отказ", sort=2, semantics="failure")
            )
            for sort, spec in enumerate(template.stages):
                session.add(
                    FunnelStage(
                        funnel_id=funnel.id,
                        code=spec.code,
                        name=spec.name.ru,
                        sort=sort,
                        semantics=spec.semantics,
                        crm_stage_id=f"C5:{spec.code}",
                    )
                )
            session.add(
                FunnelMapping(funnel_id=funnel.id, kind="loss_reason", code="bought_elsewhere", crm_id="777")
            )
            session.add(
                FunnelMapping(
                    funnel_id=funnel.id,
                    kind="field",
                    code="loss_reason",
                    crm_id="6990",
                    crm_name="UF_CRM_LOSS",
                )
            )
            session.add(
                FunnelMapping(funnel_id=funnel.id, kind="field_option", code="loss_reason:spam", crm_id="45")
            )
        async with sessions.begin() as session:
            index = await load_stage_index(session, b24.id)
            await mirror_snapshots(session, b24.id, _snapshots(utcnow()), index, "webhook")
            await tombstone(session, b24.id, ["10"], T0 + timedelta(minutes=1))
        async with sessions() as session:
            deals = {crm_id: id_ for crm_id, id_ in await session.execute(select(Deal.crm_deal_id, Deal.id))}
            stages = {
                code: id_
                for code, id_ in await session.execute(
                    select(FunnelStage.code, FunnelStage.id).where(FunnelStage.funnel_id == funnel.id)
                )
            }
        async with sessions.begin() as session:
            for status in ("processed", "processed", "pending", "failed"):
                session.add(
                    InboxEvent(
                        connection_id=b24.id,
                        dedupe_key=f"k{status}{len(session.new)}",
                        content_type="application/x-www-form-urlencoded",
                        body=FAILED_EVENT_BODY if status == "failed" else b"event=ONCRMDEALUPDATE",
                        status=status,
                        error=FAILED_EVENT_ERROR if status == "failed" else None,
                        received_at=T0,
                    )
                )
            commands = [
                ("done", "move", deals["1"], None),
                ("done", "task", deals["1"], None),
                ("done", "comment", deals["2"], None),
                ("pending", "task", deals["4"], None),
                ("failed", "task", deals["4"], CRM_ERROR_FAILED),
                ("dead", "move", deals["1"], CRM_ERROR_DEAD),
                ("dead", "fields", None, CRM_ERROR_DEAD),
            ]
            for number, (status, kind, deal_id, error) in enumerate(commands):
                session.add(
                    OutboxCommand(
                        connection_id=b24.id,
                        deal_id=deal_id,
                        kind=kind,
                        payload={},
                        idempotency_key=f"cmd-{number}",
                        status=status,
                        attempts=3 if error else 1,
                        last_error=error,
                        created_at=T0 + timedelta(minutes=number),
                    )
                )
    return Seeded(
        funnel_id=funnel.id, empty_funnel_id=empty.id, connection_id=b24.id, deals=deals, stages=stages
    )


def seed(url: str) -> Seeded:
    return asyncio.run(_seed(url))


@dataclass
class Running:
    url: str
    data: Seeded


@pytest.fixture
def dashboard(database_url: str, tmp_path: Path) -> Iterator[Running]:
    """The seeded dataset served over real HTTP (both databases via `database_url`)."""
    data = seed(database_url)
    with dashboard_server(database_url, tmp_path) as url:
        yield Running(url, data)
