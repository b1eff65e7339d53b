"""`funnelsync demo`: FunnelSync and both CRM sandboxes in one process, provisioned and busy.

It starts the service on a fresh SQLite database under <data dir>/demo, a Bitrix24 and an amoCRM
sandbox that post their webhooks to it, creates a connection to each, provisions the typical funnel
into Bitrix24 and the auto-service repair funnel into amoCRM, then plays a sales team: new requests
arrive, deals move forward, some are lost (some without a reason), some get stuck past their SLA.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections import service as connections
from app.connections.connector import open_connector
from app.connections.schemas import AmoCRMConnectionCreate, Bitrix24ConnectionCreate
from app.deals.models import Deal, StageTransition
from app.funnels.models import Funnel, FunnelMapping, FunnelStage
from app.funnels.service import provision
from app.library.service import get_template
from app.main import create_app
from app.outbox.models import OutboxCommand
from app.outbox.statuses import CommandStatus
from app.scheduler import Runtime, run_until_idle
from app.security import api_token
from app.webhooks.models import EventStatus, InboxEvent
from connectors.amocrm.sandbox import SandboxConfig as AmoSandboxConfig
from connectors.amocrm.sandbox import create_sandbox_app as amo_sandbox
from connectors.bitrix24.sandbox import SandboxConfig as Bitrix24SandboxConfig
from connectors.bitrix24.sandbox import create_sandbox_app as bitrix24_sandbox
from connectors.sandbox_user import SandboxUser, sandbox_user

DEMO_APP_TOKEN = "demo-outgoing-webhook-token"
# Some way into the demo the amoCRM sandbox answers every API call with HTTP 503 for a while: the
# outbox retries, then dead-letters what it could not deliver, for an operator to retry by hand.
OUTAGE_START, OUTAGE_LENGTH = 30.0, 90.0
PLAN = (("bitrix24", "demo-bitrix24", "general.typical"), ("amocrm", "demo-amocrm", "auto_service.repair"))


async def _amocrm_outage(ports: DemoPorts, start: float, length: float) -> None:
    if length <= 0:
        return
    control = f"http://127.0.0.1:{ports.amocrm}/_sandbox/faults"
    async with httpx.AsyncClient(timeout=10) as client:
        await asyncio.sleep(start)
        await client.post(control, json={"kind": "http_503", "count": 1_000_000})
        try:
            await asyncio.sleep(length)
        finally:
            await client.delete(control)


class _Server(uvicorn.Server):
    """Several servers share one loop: signals are handled once by the demo, not by each server."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    def install_signal_handlers(self) -> None:
        pass

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.listening.set()


@dataclass
class DemoPorts:
    service: int = 8000
    bitrix24: int = 8024
    amocrm: int = 8025


@dataclass
class SimulatedFunnel:
    crm: str
    pipeline_id: str
    process: list[str]  # CRM stage ids in order
    won: str
    lost: str
    user: SandboxUser
    loss_fields: Callable[[bool], dict[str, Any]]
    open_deals: dict[str, int] = field(default_factory=dict)  # deal id -> index in process


def demo_settings(settings: Settings, ports: DemoPorts) -> Settings:
    public = f"http://127.0.0.1:{ports.service}"
    return settings.model_copy(
        update={
            "data_dir": settings.data_dir / "demo",
            "database_url": None,
            "public_url": public,
            "api_token": SecretStr(api_token(settings)),  # the login token stays the same across runs
            "auto_migrate": True,
            "inbox_interval_seconds": 1.0,
            "outbox_interval_seconds": 1.0,
            # A short retry budget, so the simulated outage below leaves dead letters to retry.
            "outbox_max_attempts": 3,
            "port": ports.service,
        }
    )


async def _setup(settings: Settings, sessions: async_sessionmaker[AsyncSession], ports: DemoPorts) -> None:
    records = [
        connections.build_record(
            settings,
            Bitrix24ConnectionCreate(
                name="demo-bitrix24",
                crm="bitrix24",
                webhook_url=f"http://127.0.0.1:{ports.bitrix24}/rest/1/demowebhookcode/",
                app_token=SecretStr(DEMO_APP_TOKEN),
            ),
            None,
        ),
        connections.build_record(
            settings,
            AmoCRMConnectionCreate(
                name="demo-amocrm",
                crm="amocrm",
                subdomain="demo",
                token=SecretStr("demo-long-lived-token"),
                base_url=f"http://127.0.0.1:{ports.amocrm}",
            ),
            None,
        ),
    ]
    async with sessions.begin() as session:
        session.add_all(records)
    for record, (_, _, key) in zip(records, PLAN, strict=True):
        connector = await open_connector(sessions, settings, record)
        try:
            outcome = await provision(sessions, settings, record, connector, get_template(key), dry_run=False)
        finally:
            await connector.aclose()
        if not outcome.applied:
            raise RuntimeError(f"demo provisioning of {key} failed: {outcome.error}")


async def _loss_fields(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], crm: str, funnel_id: int
) -> Callable[[bool], dict[str, Any]]:
    """How a user records a loss reason in this CRM: amoCRM's loss_reason_id, Bitrix24's enumeration
    field. Without a reason the deal is lost the way FunnelSync's rules must catch."""
    async with sessions() as session:
        record = await connections.get_connection(
            session, "demo-bitrix24" if crm == "bitrix24" else "demo-amocrm"
        )
        mapped = await session.scalars(
            select(FunnelMapping.crm_id).where(
                FunnelMapping.funnel_id == funnel_id, FunnelMapping.kind == "loss_reason"
            )
        )
        reason_ids = list(mapped)
    if crm == "bitrix24":
        connector = await open_connector(sessions, settings, record)
        try:
            field = next(f for f in await connector.list_fields() if f.code == "loss_reason")
        finally:
            await connector.aclose()
        options = [o.id for o in field.options]
        return lambda with_reason: {field.crm_name: options[0]} if with_reason and options else {}
    return lambda with_reason: {"loss_reason_id": int(reason_ids[0])} if with_reason and reason_ids else {}


async def _funnels(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], ports: DemoPorts
) -> list[SimulatedFunnel]:
    funnels = []
    async with sessions() as session:
        for crm, _name, key in PLAN:
            funnel = await session.scalar(select(Funnel).where(Funnel.template_key == key))
            assert funnel is not None and funnel.crm_pipeline_id is not None
            stages = list(
                await session.scalars(
                    select(FunnelStage).where(FunnelStage.funnel_id == funnel.id).order_by(FunnelStage.sort)
                )
            )
            ids = {s.semantics: s.crm_stage_id for s in stages}
            port = ports.bitrix24 if crm == "bitrix24" else ports.amocrm
            funnels.append(
                SimulatedFunnel(
                    crm=crm,
                    pipeline_id=funnel.crm_pipeline_id,
                    process=[s.crm_stage_id for s in stages if s.semantics == "process" and s.crm_stage_id],
                    won=str(ids["success"]),
                    lost=str(ids["failure"]),
                    user=sandbox_user(crm, f"http://127.0.0.1:{port}"),
                    loss_fields=await _loss_fields(settings, sessions, crm, funnel.id),
                )
            )
    return funnels


async def _simulate_step(funnel: SimulatedFunnel, rng: random.Random, counter: list[int]) -> None:
    """One thing a sales team does: a new request, a deal moving on, won, lost, or nothing (stuck)."""
    if not funnel.open_deals or rng.random() < 0.3:
        counter[0] += 1
        deal = await funnel.user.create_deal(
            f"Demo deal {counter[0]}",
            funnel.pipeline_id,
            funnel.process[0],
            rng.randrange(10_000, 500_000, 1000),
        )
        funnel.open_deals[deal] = 0
        return
    deal = rng.choice(sorted(funnel.open_deals))
    roll = rng.random()
    if roll < 0.1:
        await funnel.user.move_deal(
            deal, funnel.pipeline_id, funnel.lost, funnel.loss_fields(rng.random() < 0.6)
        )
        funnel.open_deals.pop(deal)
    elif roll < 0.25:
        return  # stuck: nobody touches it, so its SLA runs out
    else:
        step = funnel.open_deals[deal] + 1
        if step >= len(funnel.process):
            await funnel.user.move_deal(deal, funnel.pipeline_id, funnel.won)
            funnel.open_deals.pop(deal)
        else:
            await funnel.user.move_deal(deal, funnel.pipeline_id, funnel.process[step])
            funnel.open_deals[deal] = step


async def summary(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sessions() as session:

        async def count(*conditions: Any, model: Any = OutboxCommand) -> int:
            return int(await session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)

        return {
            "events": await count(model=InboxEvent),
            "events_failed": await count(InboxEvent.status == EventStatus.FAILED, model=InboxEvent),
            "deals": await count(model=Deal),
            "transitions": await count(model=StageTransition),
            "tasks_pushed": await count(
                OutboxCommand.kind == "task", OutboxCommand.status == CommandStatus.DONE
            ),
            "reverts": await count(
                OutboxCommand.kind == "move", OutboxCommand.idempotency_key.like("%revert%")
            ),
            "escalations": await count(
                OutboxCommand.kind == "task", OutboxCommand.idempotency_key.like("%sla%")
            ),
            "dead_letters": await count(OutboxCommand.status == CommandStatus.DEAD),
        }


async def run_demo(
    settings: Settings,
    ports: DemoPorts,
    *,
    duration: float | None,
    announce: Callable[[str, str], Awaitable[None] | None],
    tick: float = 1.0,
    seed: int = 7,
    stop: asyncio.Event | None = None,
    outage: tuple[float, float] = (OUTAGE_START, OUTAGE_LENGTH),
) -> dict[str, int]:
    """Run until `duration` seconds have passed or `stop` is set (never, without either)."""
    settings = demo_settings(settings, ports)
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    app = create_app(settings)
    sandboxes = [
        (
            bitrix24_sandbox(
                Bitrix24SandboxConfig(
                    webhook_code="demowebhookcode",
                    webhook_url=f"{settings.public_url}/webhooks/bitrix24/demo-bitrix24",
                    app_token=DEMO_APP_TOKEN,
                    domain=f"127.0.0.1:{ports.bitrix24}",
                    public_url=f"http://127.0.0.1:{ports.bitrix24}",
                )
            ),
            ports.bitrix24,
        ),
        (amo_sandbox(AmoSandboxConfig(subdomain="demo", token="demo-long-lived-token")), ports.amocrm),
    ]
    servers = [
        _Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        for asgi, port in [(app, ports.service), *sandboxes]
    ]
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    stop = stop or asyncio.Event()
    try:
        for server, task in zip(servers, tasks, strict=True):
            waiter = asyncio.create_task(server.listening.wait())
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                waiter.cancel()
                raise RuntimeError("a demo server could not start (is the port already in use?)")
        sessions: async_sessionmaker[AsyncSession] = app.state.sessions
        await _setup(settings, sessions, ports)
        result = announce(
            settings.public_url, settings.api_token.get_secret_value() if settings.api_token else ""
        )
        if result is not None:
            await result
        funnels = await _funnels(settings, sessions, ports)
        outage_task = asyncio.create_task(_amocrm_outage(ports, *outage))
        rng, counter = random.Random(seed), [0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration if duration is not None else None
        try:
            while not stop.is_set() and (deadline is None or loop.time() < deadline):
                for funnel in funnels:
                    await _simulate_step(funnel, rng, counter)
                await asyncio.sleep(tick)  # the pace of the simulated sales team, not synchronisation
        finally:
            outage_task.cancel()
            await asyncio.gather(outage_task, return_exceptions=True)
            for funnel in funnels:
                await funnel.user.aclose()
        # Let what the last ticks caused finish (webhooks processed, tasks pushed) so the summary
        # counts every effect of the simulated day, not a random cut through it. The service's own
        # jobs stop starting first: this drain is then the only one, instead of racing a scheduled
        # reconcile to mirror the same new deal (the inbox and reconcile leases differ; see the
        # note on issue #12 about that race in the service itself).
        if app.state.scheduler is not None:
            app.state.scheduler.pause()
        await run_until_idle(Runtime(sessions, settings, app.state.connectors))
        return await summary(sessions)
    finally:
        # FunnelSync first: its jobs may be talking to the sandboxes, which must outlive them.
        for server, task in zip(servers, tasks, strict=True):
            server.should_exit = True
            await asyncio.gather(task, return_exceptions=True)
