"""Benchmark: dashboard analytics and board pages over 100,000 deals (~5 stage transitions each).

Seeds a SQLite file (and, with --pg, a throwaway PostgreSQL server started by tests/support/postgres.py;
or, when FUNNELSYNC_BENCH_PG_URL is set, that PostgreSQL database, which must be empty), then renders
the pages through the app in-process (httpx ASGITransport, no network) several times and prints
p50/p95 of the time each request spends in the app. Transitions are seeded the way the mirror writes
them, from_stage_entered_at included (the previous transition's time; None on a deal's first), and the
daily stage counts the mirror keeps beside them are then rebuilt from them
(app.analytics.daily_counts.rebuild).

    .venv/bin/python bench/analytics.py                      # seed once into var/bench/, then measure
    .venv/bin/python bench/analytics.py --pg                 # also into a throwaway PostgreSQL
    .venv/bin/python bench/analytics.py --no-indexes         # without the proposed indexes
    .venv/bin/python bench/analytics.py --parts              # also each part of the 180-day page alone
    FUNNELSYNC_BENCH_PG_URL=postgresql+asyncpg://u@127.0.0.1:5432/bench .venv/bin/python bench/analytics.py

The proposed indexes (PROPOSED_INDEXES) are created here only because this script owns its database;
in the service they belong in a migration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import Index, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import migrate
from app.analytics import daily_counts, live_deals, service
from app.analytics.daily_flow import stage_flow
from app.analytics.daily_won import won_entries
from app.analytics.funnels import load_funnel, parse_period
from app.analytics.models import DailyStageEntries
from app.analytics.transitions import deleted_deals
from app.config import Settings
from app.connections.models import Connection
from app.db import create_engine, session_factory
from app.deals.loss_reasons import loss_reason_of
from app.deals.models import Deal, StageTransition
from app.funnels.models import Funnel, FunnelStage
from app.library.service import get_template
from app.outbox.models import OutboxCommand
from tests.dashboard.support import build_app  # the same wiring as the tests

TOKEN = "bench-api-token-123"
TEMPLATE = "general.typical"
NOW = datetime.now(UTC).replace(microsecond=0)
SPAN = timedelta(days=180)
# Issue #14: the funnel analytics page at 100,000 deals, on both databases.
TARGETS = {name: "p95 < 100 ms" for name in ("analytics (30 days)", "analytics (180 days)")}

# What the analytics and board queries need beyond the existing indexes (see the report).
PROPOSED_INDEXES = [
    # Board columns (newest arrivals per stage), the SLA-overdue counts, and per-stage totals and
    # temperature split as an index-only scan (amount and deleted_at ride along). Makes
    # ix_deals_funnel_stage (funnel_id, stage_id), its prefix, redundant.
    Index(
        "ix_deals_funnel_stage_entered",
        Deal.funnel_id,
        Deal.stage_id,
        Deal.stage_entered_at,
        Deal.deleted_at,
        Deal.amount,
    ),
    # Deal page: the commands issued for one deal.
    Index("ix_outbox_commands_deal_id", OutboxCommand.deal_id),
]


def _path(stages: list[FunnelStage], rng: random.Random) -> list[FunnelStage]:
    """A plausible walk: forward through process stages, sometimes skipping, ending won/lost/open."""
    process = [s for s in stages if s.semantics == "process"]
    won = next(s for s in stages if s.semantics == "success")
    lost = next(s for s in stages if s.semantics == "failure")
    position = rng.choice([0, 0, 1, 1, 1])
    path = [process[position]]
    while len(path) < 7:
        roll = rng.random()
        if roll < 0.12:
            path.append(lost)
            break
        if roll < 0.18 and len(path) >= 3:
            path.append(won)
            break
        if roll < 0.24:
            break  # still open
        position += 2 if rng.random() < 0.15 else 1
        if position >= len(process):
            path.append(won)
            break
        path.append(process[position])
    return path


async def seed(engine: AsyncEngine, deals: int) -> int:
    rng = random.Random(42)
    template = get_template(TEMPLATE)
    async with engine.begin() as conn:
        connection_id = (
            await conn.execute(
                insert(Connection).values(
                    name="bench", crm="bitrix24", base_url="http://127.0.0.1/", credentials_encrypted="x",
                    settings={}, status="active", created_at=NOW, updated_at=NOW,
                ).returning(Connection.id)
            )
        ).scalar_one()  # fmt: skip
        funnel_id = (
            await conn.execute(
                insert(Funnel)
                .values(
                    connection_id=connection_id,
                    template_key=TEMPLATE,
                    name="Bench",
                    crm_pipeline_id="5",
                    created_pipeline=False,
                    created_at=NOW,
                )
                .returning(Funnel.id)
            )
        ).scalar_one()
        for sort, spec in enumerate(template.stages):
            await conn.execute(
                insert(FunnelStage).values(
                    funnel_id=funnel_id, code=spec.code, name=spec.name.ru, sort=sort,
                    semantics=spec.semantics, crm_stage_id=f"C5:{spec.code}",
                )
            )  # fmt: skip
        stages = list((await conn.execute(select(FunnelStage).order_by(FunnelStage.sort))).all())
        stage_rows = [FunnelStage(**row._mapping) for row in stages]
    reasons = [r.code for r in template.loss_reasons] + [None]
    batch = 5000
    for start in range(0, deals, batch):
        deal_rows: list[dict[str, Any]] = []
        transition_rows: list[dict[str, Any]] = []
        for number in range(start + 1, min(start + batch, deals) + 1):
            path = _path(stage_rows, rng)
            at = NOW - SPAN * rng.random()
            previous: FunnelStage | None = None
            entered: datetime | None = None  # when the deal entered `previous`, as the mirror keeps it
            for stage in path:
                transition_rows.append(
                    {
                        "deal_id": number,
                        "from_crm_stage_id": previous.crm_stage_id if previous else None,
                        "to_crm_stage_id": stage.crm_stage_id,
                        "from_stage_id": previous.id if previous else None,
                        "to_stage_id": stage.id,
                        "at": at,
                        "from_stage_entered_at": entered,
                        "source": "webhook",
                        "created_at": NOW,
                    }
                )
                previous, entered = stage, at
                at += timedelta(minutes=rng.expovariate(1 / 600))
            last = path[-1]
            fields = {"loss_reason": rng.choice(reasons)} if last.semantics == "failure" else {}
            deal_rows.append(
                {
                    "id": number, "connection_id": connection_id, "crm_deal_id": str(number),
                    "funnel_id": funnel_id, "stage_id": last.id, "crm_pipeline_id": "5",
                    "crm_stage_id": last.crm_stage_id, "managed": True, "title": f"Deal {number}",
                    "amount": Decimal(rng.randrange(1000, 500000)), "currency": "RUB",
                    "responsible_id": str(rng.randrange(1, 30)), "fields": fields,
                    "loss_reason": loss_reason_of(fields),  # as the mirror derives it
                    "crm_updated_at": entered, "crm_created_at": NOW - SPAN, "stage_entered_at": entered,
                    "deleted_at": None, "created_at": NOW, "updated_at": NOW,
                }
            )  # fmt: skip
        async with engine.begin() as conn:
            await conn.execute(insert(Deal), deal_rows)
            await conn.execute(insert(StageTransition), transition_rows)
        print(f"\r  seeded {min(start + batch, deals):>7} deals", end="", flush=True)
    print()
    if engine.dialect.name == "postgresql":  # explicit ids: move the sequence past them
        async with engine.begin() as conn:
            await conn.exec_driver_sql("SELECT setval('deals_id_seq', (SELECT max(id) FROM deals))")
    return funnel_id


async def vacuum(engine: AsyncEngine) -> None:
    """What autovacuum does to a live database after a bulk load: mark the pages all-visible, so the
    analytics read the covering indexes alone (index-only scans). FREEZE makes VACUUM wait for pages
    that autovacuum, busy with the fresh rows, has pinned instead of skipping them; the check and the
    retries cover what is left."""
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for attempt in range(5):
            for table in ("stage_transitions", "deals"):
                await autocommit.exec_driver_sql(f"VACUUM (FREEZE, ANALYZE) {table}")
            unmarked = await autocommit.scalar(
                text(
                    "SELECT sum(relpages - relallvisible) FROM pg_class"
                    " WHERE relname IN ('stage_transitions', 'deals')"
                )
            )
            if not unmarked:
                return
            print(f"  {unmarked} pages not all-visible after VACUUM #{attempt + 1}; again")
            await asyncio.sleep(2)


async def prepare(url: str, deals: int, with_indexes: bool) -> int:
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            funnel_id = await conn.scalar(select(Funnel.id).where(Funnel.name == "Bench"))
            existing = await conn.scalar(select(func.count()).select_from(Deal)) or 0
        if funnel_id is None:
            print(f"seeding {deals} deals into {url.split('@')[-1]}")
            started = time.perf_counter()
            funnel_id = await seed(engine, deals)
            print(f"  done in {time.perf_counter() - started:.0f} s")
        else:
            print(f"reusing {existing} deals in {url.split('@')[-1]}")
        async with engine.connect() as conn:
            counted = await conn.scalar(select(func.count()).select_from(DailyStageEntries))
        if not counted:  # the seed writes transitions around the mirror, which keeps these
            started = time.perf_counter()
            async with session_factory(engine).begin() as session:
                await daily_counts.rebuild(session)
            print(f"  daily stage counts rebuilt in {time.perf_counter() - started:.0f} s")
        async with engine.begin() as conn:
            for index in PROPOSED_INDEXES:
                if with_indexes:
                    await conn.run_sync(lambda sync, ix=index: ix.create(sync, checkfirst=True))
                else:
                    await conn.run_sync(lambda sync, ix=index: ix.drop(sync, checkfirst=True))
            await conn.exec_driver_sql("ANALYZE")  # fresh planner statistics on both databases
        if engine.dialect.name == "postgresql":
            await vacuum(engine)
        return funnel_id
    finally:
        await engine.dispose()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def measure(url: str, funnel_id: int, runs: int, data_dir: Path) -> None:
    settings = Settings(
        database_url=url, api_token=SecretStr(TOKEN), data_dir=data_dir, scheduler_enabled=False,
        auto_migrate=False,
    )  # fmt: skip
    app = build_app(settings)
    pages = {
        "analytics (30 days)": f"/funnels/{funnel_id}/analytics",
        "analytics (180 days)": f"/funnels/{funnel_id}/analytics?from={(NOW - SPAN).date()}&to={NOW.date()}",
        "board": f"/funnels/{funnel_id}",
        "overview": "/",
        "api analytics (180 days)": f"/api/analytics/funnels/{funnel_id}?from={(NOW - SPAN).date()}",
    }
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            login = await client.post("/login", data={"token": TOKEN})
            assert login.status_code == 303, login.text
            print(
                f"{'page':<26} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'target':>12}"
                f"  ({runs} runs after 1 warm-up)"
            )
            for name, path in pages.items():
                headers = {"Authorization": f"Bearer {TOKEN}"} if path.startswith("/api") else {}
                await client.get(path, headers=headers)  # warm caches, templates, statement cache
                timings = []
                for _ in range(runs):
                    started = time.perf_counter()
                    response = await client.get(path, headers=headers)
                    timings.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, (path, response.status_code, response.text[:300])
                p50, p95, p99 = (percentile(timings, share) for share in (0.5, 0.95, 0.99))
                target = TARGETS.get(name, "")
                print(f"{name:<26} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} {max(timings):>8.1f} {target:>12}")


async def measure_parts(url: str, funnel_id: int, runs: int) -> None:
    """Each part the 180-day page runs (app.analytics.service.funnel_analytics), alone on one
    connection: where its time goes. The page runs them side by side (see funnel_analytics)."""
    engine = create_engine(url)
    sessions = session_factory(engine)
    period = parse_period(str((NOW - SPAN).date()), str(NOW.date()), NOW)
    try:
        async with sessions() as session:
            ctx = await load_funnel(session, funnel_id)
            deleted = await deleted_deals(session, ctx)
        parts: dict[str, Any] = {
            "deleted-deal list": lambda s: deleted_deals(s, ctx),
            "flow (entries, exits, medians)": lambda s: stage_flow(s, ctx, period, deleted),
            "won entries": lambda s: won_entries(s, ctx, period, deleted),
            "loss reasons": lambda s: service._loss_reasons(s, ctx, period),
            "stage totals": lambda s: live_deals.stage_totals(s, ctx.ref.id),
        }
        print(f"{'part of analytics (180 days)':<32} {'min ms':>8} {'p50 ms':>8}  ({runs} runs each, alone)")
        for name, part in parts.items():
            timings = []
            for _ in range(runs + 1):
                async with sessions() as session:
                    started = time.perf_counter()
                    await part(session)
                    timings.append((time.perf_counter() - started) * 1000)
            timings = timings[1:]  # the first warms the connection and the statement cache
            print(f"{name:<32} {min(timings):>8.1f} {percentile(timings, 0.5):>8.1f}")
    finally:
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--sqlite", type=Path, default=Path("var/bench/analytics.db"))
    parser.add_argument("--no-indexes", action="store_true", help="drop the proposed indexes first")
    parser.add_argument(
        "--pg", action="store_true", help="also seed and measure a throwaway PostgreSQL (seeded each run)"
    )
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite file")
    parser.add_argument(
        "--parts", action="store_true", help="then time each part of the 180-day page alone (7 runs each)"
    )
    args = parser.parse_args()
    with ExitStack() as stack:
        targets = [] if args.no_sqlite else [f"sqlite+aiosqlite:///{args.sqlite.as_posix()}"]
        if os.environ.get("FUNNELSYNC_BENCH_PG_URL"):
            targets.append(os.environ["FUNNELSYNC_BENCH_PG_URL"])
        if args.pg:
            from tests.support.postgres import postgres_server

            server = stack.enter_context(postgres_server())
            targets.append(server.create_database("analytics"))
        for url in targets:
            funnel_id = await prepare(url, args.deals, not args.no_indexes)
            await measure(url, funnel_id, args.runs, args.sqlite.parent)
            if args.parts:
                await measure_parts(url, funnel_id, 7)


if __name__ == "__main__":
    asyncio.run(main())
