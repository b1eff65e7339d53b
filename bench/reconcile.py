"""Benchmark: a full resync (reconcile(full=True)) of N deals from each CRM sandbox.

For each CRM and each size the sandbox runs in this process (uvicorn in a thread) at the CRM's real
limits (Bitrix24 standard plan: 2 req/s, burst 50; amoCRM: 7 req/s), scaled by --speed; N deals are
seeded with the sandbox's bulk endpoint (no webhooks). The reconcile itself runs in a fresh child
process against a fresh database, so its peak memory (tracemalloc peak of the reconcile call and the
process's maxrss) is not mixed with the sandbox's copy of the deals. Printed per run: wall time of the
reconcile call, requests the sandbox saw beside the minimum (ceil(N/2500) Bitrix24, ceil(N/250)
amoCRM), deals mirrored, and peak memory. Two sizes by default show whether memory grows with N.

    .venv/bin/python bench/reconcile.py                          # both CRMs, N=100,000 and 20,000
    .venv/bin/python bench/reconcile.py --crm amocrm --sizes 100000 --speed-amocrm 4
    .venv/bin/python bench/reconcile.py --pg                     # also on a throwaway PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, table

SECRET_KEY = "7sGqz8pM5Y2Jw8m3b7yS0gR5tW1vN9cX4eK6hL2dQ0A="
DEALS_PER_REQUEST = {"bitrix24": 2500, "amocrm": 250}
AMO_TOKEN = "bench-long-lived-token"


# --- the sandbox (this process) -----------------------------------------------------------------------


def index_bitrix24_fast_mode() -> None:
    """Serve fast-mode pages (`>ID` filter, ID ascending, start=-1) from a sorted id index.

    The Bitrix24 sandbox filters and sorts every deal for every crm.deal.list command
    (connectors/bitrix24/sandbox/deals.py query_deals): ~0.3-0.7 s per command at 100,000 deals, so a
    50-command batch outlasts the client's read timeout and the real time it burns is charged to the
    method's operating-time budget (480 s per 10 minutes) -- costs a real portal, which answers from the
    ID index, does not have. This bench measures FunnelSync, not the emulator, so for exactly that
    query shape the page is taken by bisecting a sorted id list; every candidate still goes through
    the sandbox's own filter, so the rows are the same. Any other query runs the sandbox's code.
    """
    from connectors.bitrix24.sandbox import deals as sandbox_deals

    original = sandbox_deals.query_deals
    if getattr(original, "bench_indexed", False):
        return
    cache: dict[str, Any] = {"key": None, "ids": []}

    def query_deals(ctx: Any, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int | None, int | None]:
        filters, order = params.get("filter"), params.get("order")
        fast = (
            str(params.get("start")) == "-1"
            and isinstance(filters, dict)
            and list(filters) == [">ID"]
            and isinstance(order, dict)
            and [(str(k).upper(), str(v).upper()) for k, v in order.items()] == [("ID", "ASC")]
        )
        try:
            bound = int(filters[">ID"]) if fast and filters else None
        except (TypeError, ValueError):
            bound = None
        if bound is None:
            return original(ctx, params)
        deals = ctx.state.deals
        key = (id(deals), len(deals))  # the bench does not change deals while it reads them
        if cache["key"] != key:
            cache["key"], cache["ids"] = key, sorted(deals)
        page: list[dict[str, Any]] = []
        for deal_id in cache["ids"][bisect.bisect_right(cache["ids"], bound) :]:
            deal = deals[deal_id]
            if sandbox_deals._matches(deal, filters, ctx):
                page.append(deal)
                if len(page) == sandbox_deals.PAGE:
                    break
        return page, 0, None  # fast mode: no total, no next (like the sandbox)

    query_deals.bench_indexed = True  # type: ignore[attr-defined]
    sandbox_deals.query_deals = query_deals


@contextmanager
def running_sandbox(crm: str, speed: float, *, indexed: bool = True) -> Iterator[str]:
    """The CRM's sandbox app on a loopback port; yields the base URL."""
    from tests.support.server import serve_asgi

    app: Any
    if crm == "bitrix24":
        if indexed:
            index_bitrix24_fast_mode()
        from connectors.bitrix24.sandbox import SandboxConfig as B24Config
        from connectors.bitrix24.sandbox import create_sandbox_app as b24_app

        # Real standard-plan limits; the operating-time budget is charged real execution time.
        app = b24_app(B24Config(speed=speed))
    else:
        from connectors.amocrm.sandbox import SandboxConfig as AmoConfig
        from connectors.amocrm.sandbox import create_sandbox_app as amo_app

        app = amo_app(AmoConfig(subdomain="bench", token=AMO_TOKEN, speed=speed))
    with serve_asgi(app) as url:
        yield url


def seed(client: httpx.Client, crm: str, count: int) -> float:
    started = time.perf_counter()
    body: dict[str, Any] = {"count": count}
    if crm == "amocrm":
        body["notify"] = False  # an import: no webhooks
    response = client.post("/_sandbox/deals/bulk", json=body, timeout=600)
    response.raise_for_status()
    return time.perf_counter() - started


def request_count(client: httpx.Client, crm: str) -> tuple[int, dict[str, Any]]:
    stats: dict[str, Any] = client.get("/_sandbox/stats").raise_for_status().json()
    if crm == "bitrix24":
        return int(stats["requests"]), {"by_method": stats["by_method"], "errors": stats["errors"]}
    return int(stats["total"]), {"requests": stats["requests"], "statuses": stats["statuses"]}


def reset_stats(client: httpx.Client) -> None:
    client.post("/_sandbox/stats/reset").raise_for_status()


# --- the measured reconcile (child process) -----------------------------------------------------------


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Migrate a fresh database, add the connection, run reconcile(full=True) once, measure it."""
    from pydantic import SecretStr

    from app import migrate
    from app.config import Settings
    from app.connections import service as connections
    from app.db import create_engine, session_factory
    from app.deals.models import Deal
    from app.deals.reconcile import reconcile
    from connectors.amocrm.client import AmoCRMConnector
    from connectors.amocrm.descriptor import AmoCRMConnectionCreate
    from connectors.base import CRMConnector
    from connectors.bitrix24.client import Bitrix24Connector
    from connectors.bitrix24.descriptor import Bitrix24ConnectionCreate
    from connectors.http import AMOCRM_DEFAULT, BITRIX24_STANDARD

    crm, url, database_url, speed = spec["crm"], spec["url"], spec["database_url"], spec["speed"]
    migrate.upgrade(database_url)
    settings = Settings(
        database_url=database_url,
        data_dir=Path(spec["data_dir"]),
        api_token=SecretStr("bench-api-token-123"),
        secret_key=SecretStr(SECRET_KEY),
        scheduler_enabled=False,
        allow_private_crm=True,  # the sandboxes run on 127.0.0.1
    )
    data: Bitrix24ConnectionCreate | AmoCRMConnectionCreate
    connector: CRMConnector
    if crm == "bitrix24":
        webhook_url = f"{url}/rest/1/sandboxwebhookcode1/"
        data = Bitrix24ConnectionCreate(name="bench", crm="bitrix24", webhook_url=webhook_url)
        connector = Bitrix24Connector(
            webhook_url=webhook_url, rate=BITRIX24_STANDARD.scaled(speed), account_key="bench:b24"
        )
    else:
        data = AmoCRMConnectionCreate(
            name="bench", crm="amocrm", subdomain="bench", token=SecretStr(AMO_TOKEN), base_url=url
        )
        connector = AmoCRMConnector(
            "bench", token=AMO_TOKEN, base_url=url, rate=AMOCRM_DEFAULT.scaled(speed), account_key="bench:amo"
        )
    record = connections.build_record(settings, data, None)

    async def measure() -> dict[str, Any]:
        from sqlalchemy import func, select

        engine = create_engine(database_url)
        sessions = session_factory(engine)
        try:
            async with sessions.begin() as session:
                await connections.add_connection(session, record)
            connection_id = record.id
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if spec["tracemalloc"]:
                tracemalloc.start()
            started = time.perf_counter()
            result = await reconcile(sessions, connection_id, connector, full=True)
            wall = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1] if spec["tracemalloc"] else None
            tracemalloc.stop()
            rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            hwm = vm_hwm_kib()
            async with sessions() as session:
                mirrored = await session.scalar(
                    select(func.count()).select_from(Deal).where(Deal.connection_id == connection_id)
                )
            return {
                "wall": wall,
                "deals_seen": result.deals_seen,
                "created": result.created,
                "mirrored": mirrored,
                "tracemalloc_peak": peak,
                "maxrss_before_kib": rss_before,
                "maxrss_kib": rss_after,
                "vm_hwm_kib": hwm,
            }
        finally:
            await connector.aclose()
            await engine.dispose()

    return asyncio.run(measure())


# Linux carries a process's maxrss across execve, so a worker started by the bench process (which
# holds the sandbox's deals) would report the bench's peak as its own. Workers are therefore started
# by this launcher, itself started before anything large is loaded.
LAUNCHER = """
import json, subprocess, sys
for line in sys.stdin:
    done = subprocess.run(json.loads(line), capture_output=True, text=True)
    print(json.dumps([done.returncode, done.stdout, done.stderr[-4000:]]), flush=True)
"""


class Launcher:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        code, stdout, stderr = json.loads(self.process.stdout.readline())
        if code != 0:
            raise RuntimeError(f"reconcile worker failed:\n{stderr}")
        result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
        return result

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def vm_hwm_kib() -> int:
    """Peak RSS of this process's current address space (VmHWM, Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# --- driver -------------------------------------------------------------------------------------------


@contextmanager
def databases(use_pg: bool, work: Path) -> Iterator[list[tuple[str, Any]]]:
    """(label, factory) pairs; each factory returns a URL of a fresh, empty database."""
    counter = iter(range(1_000_000))
    targets: list[tuple[str, Any]] = [
        ("sqlite", lambda: f"sqlite+aiosqlite:///{(work / f'reconcile-{next(counter)}.db').as_posix()}")
    ]
    with ExitStack() as stack:
        if use_pg:
            from tests.support.postgres import postgres_server

            server = stack.enter_context(postgres_server())
            targets.append(("postgresql", lambda: server.create_database(f"reconcile_{next(counter)}")))
        yield targets


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024 / 1024:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--crm", choices=["bitrix24", "amocrm", "both"], default="both")
    parser.add_argument(
        "--sizes", default="100000,20000", help="comma-separated deal counts (default 100000,20000)"
    )
    parser.add_argument("--speed-bitrix24", type=float, default=1.0, help="sandbox limits/clocks factor")
    parser.add_argument("--speed-amocrm", type=float, default=1.0, help="sandbox limits/clocks factor")
    parser.add_argument("--pg", action="store_true", help="also reconcile into a throwaway PostgreSQL")
    parser.add_argument(
        "--no-tracemalloc", action="store_true", help="skip tracemalloc (it slows allocation-heavy code)"
    )
    parser.add_argument(
        "--raw-bitrix24-sandbox",
        action="store_true",
        help="do not index the Bitrix24 sandbox's fast-mode pages (100,000 deals then take ~25 min)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0

    launcher = Launcher()  # first, while this process is still small
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    crms = ["bitrix24", "amocrm"] if args.crm == "both" else [args.crm]
    speeds = {"bitrix24": args.speed_bitrix24, "amocrm": args.speed_amocrm}
    rows: list[list[Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="funnelsync-bench-") as tmp, databases(args.pg, Path(tmp)) as dbs:
        for crm in crms:
            for size in sizes:
                for label, new_database in dbs:
                    # A fresh sandbox per run: its rate bucket starts empty, like a quiet portal.
                    with (
                        running_sandbox(crm, speeds[crm], indexed=not args.raw_bitrix24_sandbox) as url,
                        httpx.Client(base_url=url) as client,
                    ):
                        seeded = seed(client, crm, size)
                        reset_stats(client)
                        print(
                            f"{crm} N={size:,} {label}: seeded in {seeded:.1f} s, reconciling...", flush=True
                        )
                        spec = {
                            "crm": crm,
                            "url": url,
                            "database_url": new_database(),
                            "data_dir": tmp,
                            "speed": speeds[crm],
                            "tracemalloc": not args.no_tracemalloc,
                        }
                        got = launcher.run(spec)
                        requests, detail = request_count(client, crm)
                    minimum = math.ceil(size / DEALS_PER_REQUEST[crm])
                    rows.append(
                        [
                            f"{crm} ({label})",
                            f"{size:,}",
                            f"x{speeds[crm]:g}",
                            f"{got['wall']:.1f}",
                            requests,
                            minimum,
                            f"{got['mirrored']:,}",
                            mib(got["tracemalloc_peak"]),
                            f"{got['maxrss_kib'] / 1024:.0f}",
                            f"{(got['maxrss_kib'] - got['maxrss_before_kib']) / 1024:.0f}",
                            f"{got['vm_hwm_kib'] / 1024:.0f}",
                        ]
                    )
                    if got["mirrored"] != size:
                        notes.append(f"{crm} N={size} {label}: mirrored {got['mirrored']} of {size} deals!")
                    if requests != minimum:
                        notes.append(f"{crm} N={size} {label}: {requests} requests vs {minimum}: {detail}")
    launcher.close()
    print()
    print(
        table(
            [
                "run",
                "deals",
                "speed",
                "wall s",
                "requests",
                "minimum",
                "mirrored",
                "tracemalloc peak MiB",
                "maxrss MiB",
                "maxrss growth MiB",
                "VmHWM MiB",
            ],
            rows,
        )
    )
    print(
        "\nrequests: HTTP requests the sandbox received (control endpoints excluded); minimum: "
        "ceil(N/2500) Bitrix24 (one batch of 50 chained fast-mode crm.deal.list), ceil(N/250) amoCRM.\n"
        "maxrss: getrusage maxrss of the reconcile process; growth: after the reconcile minus before it "
        "(imports, migrations done); VmHWM: the kernel's peak RSS of the process, a cross-check."
    )
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
