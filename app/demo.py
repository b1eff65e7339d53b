"""`funnelsync demo`: FunnelSync and both CRM sandboxes in one process, provisioned and busy.

It starts the service on a fresh SQLite database under <data dir>/demo, a Bitrix24 and an amoCRM
sandbox that post their webhooks to it, creates a connection to each, provisions the typical funnel
into Bitrix24 and the auto-service repair funnel into amoCRM, then plays a sales team: new requests
arrive, deals move forward, some are lost (some without a reason), some get stuck past their SLA.
Beside them, funnels with automations send a visit reminder, a survey and a win-back offer through
channel sandboxes (app.demo_messages).
"""

from __future__ import annotations

import asyncio
import random
import shlex
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp

from app.automations.sweep import sweep_automations
from app.config import Settings
from app.connections import service as connections
from app.connections.connector import open_connector
from app.connections.models import Connection
from app.connections.schemas import validate_connection_input
from app.deals.models import Deal, StageTransition
from app.demo_messages import (
    MESSAGE_FUNNELS,
    channel_accounts,
    channel_sandbox_apps,
    configure_messaging,
    messages_sent,
    play_message_scenarios,
)
from app.funnels.models import Funnel, FunnelMapping, FunnelStage
from app.funnels.service import provision
from app.library.service import get_template
from app.logging_filters import install_log_redaction
from app.main import create_app
from app.messages.delivery import run_message_delivery
from app.outbox.models import OutboxCommand
from app.outbox.statuses import CommandStatus, RuleName
from app.scheduler import Runtime, run_until_idle
from app.security import api_token
from app.webhooks.models import EventStatus, InboxEvent
from connectors.descriptor import descriptor_for, sandbox_kit
from connectors.http import tls_context
from connectors.sandbox_support.kit import SandboxAccount, SandboxKit, SandboxUser

DEMO_APP_TOKEN = "demo-outgoing-webhook-token"
# Some way into the demo the amoCRM sandbox answers every API call with HTTP 503 for a while: the
# outbox retries, then dead-letters what it could not deliver, for an operator to retry by hand.
OUTAGE_START, OUTAGE_LENGTH = 30.0, 90.0
# What the demo runs: a sandbox of each CRM (its kit comes from the CRM's descriptor), the connection
# to it, and the template provisioned there.
PLAN = (("bitrix24", "demo-bitrix24", "general.typical"), ("amocrm", "demo-amocrm", "auto_service.repair"))


async def _amocrm_outage(ports: DemoPorts, start: float, length: float) -> None:
    if length <= 0:
        return
    control = f"http://127.0.0.1:{ports.amocrm}/_sandbox/faults"
    async with httpx.AsyncClient(timeout=10, verify=tls_context()) as client:
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

    def of(self, crm: str) -> int:
        """The port of the CRM's sandbox."""
        return {"bitrix24": self.bitrix24, "amocrm": self.amocrm}[crm]


@dataclass(frozen=True)
class DemoAccount:
    """One line of PLAN, running: the CRM's sandbox kit and the account it serves."""

    crm: str
    template_key: str
    kit: SandboxKit
    account: SandboxAccount


def demo_accounts(settings: Settings, ports: DemoPorts) -> list[DemoAccount]:
    accounts = []
    for crm, name, template_key in PLAN:
        account = SandboxAccount(
            connection=name,
            port=ports.of(crm),
            webhook_url=f"{settings.public_url}/webhooks/{crm}/{name}",
            webhook_token=DEMO_APP_TOKEN,
        )
        accounts.append(DemoAccount(crm, template_key, sandbox_kit(descriptor_for(crm)), account))
    return accounts


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


def demo_data_dir(settings: Settings) -> Path:
    """The demo's own data folder, emptied at every start: never the CLI's default one (var/), whose
    connections and key it would wipe. The banner prints the line that points the CLI at it."""
    return (settings.data_dir / "demo").resolve()


def cli_export_line(settings: Settings) -> str:
    """The shell line after which `funnelsync ...` in another terminal works on the running demo:
    its data folder (database and key), and the sandboxes' 127.0.0.1 addresses allowed."""
    return f"export FUNNELSYNC_DATA_DIR={shlex.quote(str(demo_data_dir(settings)))} FUNNELSYNC_ALLOW_PRIVATE_CRM=true"


def demo_settings(settings: Settings, ports: DemoPorts) -> Settings:
    public = f"http://127.0.0.1:{ports.service}"
    return settings.model_copy(
        update={
            "data_dir": demo_data_dir(settings),
            "database_url": None,
            "public_url": public,
            "api_token": SecretStr(api_token(settings)),  # the login token stays the same across runs
            "auto_migrate": True,
            "allow_private_crm": True,  # the sandboxes run on 127.0.0.1
            "inbox_interval_seconds": 1.0,
            "outbox_interval_seconds": 1.0,
            "automations_interval_seconds": 2.0,
            "messages_interval_seconds": 1.0,
            # A short retry budget, so the simulated outage below leaves dead letters to retry.
            "outbox_max_attempts": 3,
            "port": ports.service,
        }
    )


async def _setup(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], accounts: list[DemoAccount]
) -> None:
    records = [
        connections.build_record(
            settings,
            validate_connection_input({"name": a.account.connection, **a.kit.connection_input(a.account)}),
            None,
        )
        for a in accounts
    ]
    async with sessions.begin() as session:
        session.add_all(records)
    for record, demo in zip(records, accounts, strict=True):
        keys = [demo.template_key] + [key for name, key in MESSAGE_FUNNELS if name == record.name]
        connector = await open_connector(sessions, settings, record)
        try:
            for key in keys:
                outcome = await provision(
                    sessions, settings, record, connector, get_template(key), dry_run=False
                )
                if not outcome.applied:
                    raise RuntimeError(f"demo provisioning of {key} failed: {outcome.error}")
        finally:
            await connector.aclose()


async def _loss_fields(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    demo: DemoAccount,
    record: Connection,
    funnel_id: int,
) -> Callable[[bool], dict[str, Any]]:
    """How a user records a loss reason in this CRM (the kit knows). Without a reason the deal is
    lost the way FunnelSync's rules must catch."""
    async with sessions() as session:
        mapped = await session.scalars(
            select(FunnelMapping.crm_id).where(
                FunnelMapping.funnel_id == funnel_id, FunnelMapping.kind == "loss_reason"
            )
        )
        reason_ids = list(mapped)
    connector = await open_connector(sessions, settings, record)
    try:
        return await demo.kit.loss_fields(connector, reason_ids)
    finally:
        await connector.aclose()


async def _funnels(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], accounts: list[DemoAccount]
) -> list[SimulatedFunnel]:
    funnels = []
    for demo in accounts:
        async with sessions() as session:
            record = await connections.get_connection(session, demo.account.connection)
            funnel = await session.scalar(select(Funnel).where(Funnel.template_key == demo.template_key))
            assert funnel is not None and funnel.crm_pipeline_id is not None
            stages = list(
                await session.scalars(
                    select(FunnelStage).where(FunnelStage.funnel_id == funnel.id).order_by(FunnelStage.sort)
                )
            )
        ids = {s.semantics: s.crm_stage_id for s in stages}
        funnels.append(
            SimulatedFunnel(
                crm=demo.crm,
                pipeline_id=funnel.crm_pipeline_id,
                process=[s.crm_stage_id for s in stages if s.semantics == "process" and s.crm_stage_id],
                won=str(ids["success"]),
                lost=str(ids["failure"]),
                user=demo.kit.user(demo.account),
                loss_fields=await _loss_fields(settings, sessions, demo, record, funnel.id),
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


async def summary(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
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
            "reverts": await count(OutboxCommand.rule == RuleName.REVERT_MOVE),
            "escalations": await count(OutboxCommand.rule == RuleName.SLA_ESCALATION),
            "dead_letters": await count(OutboxCommand.status == CommandStatus.DEAD),
            "messages_sent": await messages_sent(sessions),  # by automation
        }


async def _start_servers(apps: list[tuple[ASGIApp, int]]) -> tuple[list[_Server], list[asyncio.Task[None]]]:
    """Serve each app on its port; returns once all listen (RuntimeError when one cannot start)."""
    install_log_redaction()  # the demo's amoCRM deliveries carry their secret in the URL
    servers = [
        _Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        for asgi, port in apps
    ]
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    for server, task in zip(servers, tasks, strict=True):
        waiter = asyncio.create_task(server.listening.wait())
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            for other in servers:
                other.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)
            raise RuntimeError("a demo server could not start (is the port already in use?)")
    return servers, tasks


def _bound_port(server: uvicorn.Server) -> int:
    """The port a server asked to listen on port 0 got."""
    return int(server.servers[0].sockets[0].getsockname()[1])


async def _simulate(
    funnels: list[SimulatedFunnel],
    ports: DemoPorts,
    outage: tuple[float, float],
    *,
    seed: int,
    tick: float,
    duration: float | None,
    stop: asyncio.Event,
) -> None:
    """The simulated sales team works the funnels (and the amoCRM outage runs) until the deadline
    or `stop`."""
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


async def run_demo(
    settings: Settings,
    ports: DemoPorts,
    *,
    duration: float | None,
    announce: Callable[[str, str, dict[str, str]], Awaitable[None] | None],
    tick: float = 1.0,
    seed: int = 7,
    stop: asyncio.Event | None = None,
    outage: tuple[float, float] = (OUTAGE_START, OUTAGE_LENGTH),
) -> dict[str, Any]:
    """Run until `duration` seconds have passed or `stop` is set (never, without either).
    `announce(url, token, inboxes)` is told where the service runs and where each channel sandbox
    lists what it received."""
    settings = demo_settings(settings, ports)
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    app = create_app(settings)
    accounts = demo_accounts(settings, ports)
    channel_apps = channel_sandbox_apps()
    apps: list[tuple[ASGIApp, int]] = [(app, ports.service)]
    apps += [(a.kit.create_app(a.account), a.account.port) for a in accounts]
    apps += [(channel_app, 0) for channel_app in channel_apps.values()]  # any free port
    servers, tasks = await _start_servers(apps)
    channel_urls = {
        channel: f"http://127.0.0.1:{_bound_port(server)}"
        for channel, server in zip(channel_apps, servers[-len(channel_apps) :], strict=True)
    }
    stop = stop or asyncio.Event()
    try:
        sessions: async_sessionmaker[AsyncSession] = app.state.sessions
        await _setup(settings, sessions, accounts)
        names = [a.account.connection for a in accounts]
        await configure_messaging(settings, sessions, names, channel_accounts(channel_apps, channel_urls))
        token = settings.api_token.get_secret_value() if settings.api_token else ""
        inboxes = {channel: f"{url}/_sandbox/messages" for channel, url in channel_urls.items()}
        result = announce(settings.public_url, token, inboxes)
        if result is not None:
            await result
        await play_message_scenarios(sessions, {a.account.connection: (a.kit, a.account) for a in accounts})
        funnels = await _funnels(settings, sessions, accounts)
        await _simulate(funnels, ports, outage, seed=seed, tick=tick, duration=duration, stop=stop)
        # Let what the last ticks caused finish (webhooks processed, tasks pushed, automations due
        # and their messages sent) so the summary counts every effect of the simulated day, not a
        # random cut through it. The service's own jobs stop starting first, so this drain is the
        # only one.
        if app.state.scheduler is not None:
            app.state.scheduler.pause()
        runtime = Runtime(sessions, settings, app.state.connectors)
        await run_until_idle(runtime)
        await sweep_automations(sessions)
        await run_until_idle(runtime)  # the CRM commands the sweep queued
        await run_message_delivery(runtime)
        return await summary(sessions)
    finally:
        # FunnelSync first: its jobs may be talking to the sandboxes, which must outlive them.
        for server, task in zip(servers, tasks, strict=True):
            server.should_exit = True
            await asyncio.gather(task, return_exceptions=True)
