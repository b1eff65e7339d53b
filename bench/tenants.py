"""Benchmark: many client portals on one FunnelSync worker (issue #14): webhook -> CRM task latency
for the healthy accounts while 10% of the accounts are in an outage, aggregate throughput against the
sum of the accounts' rate ceilings, CPU and RSS per worker; then two workers on one PostgreSQL
against one.

Per run: N Bitrix24 portals in one multi-account sandbox process (connectors/bitrix24/sandbox/
accounts.py: a port per portal, the real 2 req/s, burst 50 bucket each); `funnelsync serve` (HTTP
only) takes the webhooks and W `funnelsync worker` processes run the jobs. Every portal gets a
connection and the by_goal.active_base funnel, whose first stage creates a task on entry. Then, for
`--duration` seconds, deals are created in the portals round robin at `--rate` per second; each
portal posts its ONCRMDEALADD webhook to FunnelSync, which fetches the deal, mirrors it and pushes
the stage's task. Latency = the portal creating the task minus the bench creating the deal. 10% of
the portals (every tenth) answer every REST call with HTTP 503 (`--faulty 503`) or after 5 s
(`--faulty slow`) for the whole run.

    .venv/bin/python bench/tenants.py --tenants 10 100 300 --duration 30 --rate 20
    .venv/bin/python bench/tenants.py --tenants 100 --workers 1 2 --database postgresql --rate 120

Everything (the sandbox, the service, the workers, this driver) shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, percentile, server_process, stop_process, table
from bench.ingest import API_TOKEN, free_port, funnelsync_bin, service_env

TEMPLATE = "by_goal.active_base"  # six stages; its first stage creates a task on entry
CEILING = 2.0  # Bitrix24 standard plan: requests per second per portal
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
FAULT: dict[str, dict[str, Any]] = {
    "503": {"kind": "http_503"},
    "slow": {"kind": "timeout", "seconds": 5.0},
    "none": {},  # a baseline without the outage
}
WEBHOOK_CODE = "sandboxwebhookcode1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOGGED_WORKER = (
    "import logging, sys; logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s'); "
    "sys.argv = ['funnelsync', 'worker']; from app.cli import main; main()"
)


@dataclass
class Scenario:
    tenants: int
    workers: int
    database: str
    rate: float
    duration: float
    faulty: str


@dataclass
class Outcome:
    scenario: Scenario
    latencies: list[float] = field(default_factory=list)  # healthy accounts, seconds
    created: int = 0  # deals created in healthy portals
    missing: int = 0  # of those, deals whose task never came within the drain time
    healthy_requests: int = 0  # REST calls the healthy portals answered during the load
    load_seconds: float = 0.0
    cpu: list[float] = field(default_factory=list)  # per worker, share of one core over the load
    rss_mb: list[float] = field(default_factory=list)  # per worker, at the end
    stages: dict[str, list[float]] = field(default_factory=dict)  # see stage_times

    @property
    def healthy(self) -> int:
        return self.scenario.tenants - faulty_count(self.scenario.tenants)

    @property
    def tasks_per_second(self) -> float:
        return (self.created - self.missing) / self.load_seconds if self.load_seconds else 0.0


def faulty_count(tenants: int) -> int:
    return len([i for i in range(tenants) if is_faulty(i)])


def is_faulty(index: int) -> bool:
    return index % 10 == 9  # every tenth portal: 10% of them


# --- processes ----------------------------------------------------------------------------------------


@contextmanager
def sandbox_portals(count: int, service_url: str, work: Path) -> Iterator[list[int]]:
    ports_file = work / "ports.json"
    command = [
        sys.executable, "-m", "connectors.bitrix24.sandbox.accounts", "--count", str(count),
        "--ports-file", str(ports_file), "--webhook-url", f"{service_url}/webhooks/bitrix24/t{{index}}",
    ]  # fmt: skip
    with server_process(command, dict(os.environ), f"{count} sandbox portals"):
        yield json.loads(ports_file.read_text("utf-8"))


def worker_env(data_dir: Path, database_url: str) -> dict[str, str]:
    env = service_env(data_dir, database_url, scheduler=False)
    # Jobs poll often: the workers are separate processes a webhook cannot wake.
    env.update(FUNNELSYNC_INBOX_INTERVAL_SECONDS="0.5", FUNNELSYNC_OUTBOX_INTERVAL_SECONDS="0.5")
    return env


@contextmanager
def worker_processes(count: int, env: dict[str, str], work: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = []
    try:
        for index in range(count):
            log = (work / f"worker{index}.log").open("wb")
            command = [funnelsync_bin(), "worker"]
            if os.environ.get("BENCH_LOG"):  # the jobs' INFO lines with times, in the work folder
                command = [sys.executable, "-c", LOGGED_WORKER]
            if os.environ.get("BENCH_PROFILE"):  # a cProfile of each worker in the work folder
                command = [
                    sys.executable,
                    "-m",
                    "cProfile",
                    "-o",
                    str(work / f"worker{index}.prof"),
                    *command,
                ]
            processes.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log))
        yield processes
    finally:
        for process in processes:
            stop_process(process)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- setup --------------------------------------------------------------------------------------------


async def _bounded(calls: list[Any], limit: int = 16) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Any) -> Any:
        async with gate:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


async def connect_and_provision(api: httpx.AsyncClient, index: int, port: int) -> int:
    """Connection t<index> for the portal on `port`, the template provisioned; the pipeline's id."""
    spec = {
        "name": f"t{index}",
        "crm": "bitrix24",
        "webhook_url": f"http://127.0.0.1:{port}/rest/1/{WEBHOOK_CODE}/",
        "app_token": f"tenant{index:06d}applicationtoken",
    }
    response = await api.post("/api/connections", json=spec)
    if response.status_code != 201:
        raise RuntimeError(f"connection t{index}: {response.status_code} {response.text}")
    response = await api.post(
        f"/api/connections/t{index}/provision", json={"template": TEMPLATE, "dry_run": False}
    )
    if response.status_code != 200:
        raise RuntimeError(f"provisioning t{index}: {response.status_code} {response.text}")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as portal:
        listed = await portal.post(f"/rest/1/{WEBHOOK_CODE}/crm.category.list", data={"entityTypeId": "2"})
    return max(int(c["id"]) for c in listed.json()["result"]["categories"])


async def inject_faults(ports: list[int], faulty: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for index, port in enumerate(ports):
            if is_faulty(index) and FAULT[faulty]:
                spec = {**FAULT[faulty], "count": 10_000_000}
                response = await client.post(f"http://127.0.0.1:{port}/_sandbox/faults", json=spec)
                response.raise_for_status()


async def healthy_requests(ports: list[int]) -> int:
    async with httpx.AsyncClient(timeout=30) as client:
        total = 0
        for index, port in enumerate(ports):
            if not is_faulty(index):
                total += int((await client.get(f"http://127.0.0.1:{port}/_sandbox/stats")).json()["requests"])
        return total


# --- load ---------------------------------------------------------------------------------------------


async def create_deals(
    ports: list[int], categories: list[int], scenario: Scenario
) -> dict[tuple[int, str], float]:
    """Deals created round robin at the steady rate; (portal index, deal id) -> when it was created."""
    created: dict[tuple[int, str], float] = {}
    total = int(scenario.rate * scenario.duration)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(k: int) -> None:
            index = k % len(ports)
            body = {"fields": {"TITLE": f"Lead {k}", "CATEGORY_ID": categories[index]}}
            started = time.time()
            response = await client.post(f"http://127.0.0.1:{ports[index]}/_sandbox/deals", json=body)
            created[(index, str(response.json()["ID"]))] = started

        began = time.monotonic()
        pending = []
        for k in range(total):
            delay = began + k / scenario.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(k)))
        await asyncio.gather(*pending)
    return created


async def task_times(ports: list[int]) -> dict[tuple[int, str], float]:
    """(portal index, deal id) -> when the portal created the deal's first task (healthy portals)."""
    seen: dict[tuple[int, str], float] = {}
    async with httpx.AsyncClient(timeout=60) as client:
        for index, port in enumerate(ports):
            if is_faulty(index):
                continue
            for at, _task_id, bindings in (
                await client.get(f"http://127.0.0.1:{port}/_sandbox/tasks/created")
            ).json():
                for binding in bindings:
                    key = (index, str(binding).removeprefix("D_"))
                    seen.setdefault(key, float(at))
    return seen


async def wait_for_tasks(
    ports: list[int], wanted: set[tuple[int, str]], seconds: float
) -> dict[tuple[int, str], float]:
    deadline = time.monotonic() + seconds
    while True:
        done = await task_times(ports)
        if wanted <= done.keys() or time.monotonic() > deadline:
            return done
        await asyncio.sleep(1)


# --- one run ------------------------------------------------------------------------------------------


@contextmanager
def database(name: str, work: Path) -> Iterator[str]:
    if name == "sqlite":
        yield f"sqlite+aiosqlite:///{(work / 'funnelsync.db').as_posix()}"
        return
    from tests.support.postgres import postgres_server

    with postgres_server() as server:
        yield server.create_database("tenants")


def run(scenario: Scenario) -> Outcome:
    outcome = Outcome(scenario)
    with ExitStack() as stack:
        if os.environ.get("BENCH_KEEP"):  # keep the work folder (logs, database) to look at
            work = Path(tempfile.mkdtemp(prefix="bench-tenants-"))
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-tenants-")))
        print(f"  work folder: {work}", flush=True)
        database_url = stack.enter_context(database(scenario.database, work))
        env = worker_env(work, database_url)
        if scenario.database != "sqlite":
            subprocess.run(
                [funnelsync_bin(), "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True
            )
        service_port = free_port()
        service_url = f"http://127.0.0.1:{service_port}"
        ports = stack.enter_context(sandbox_portals(scenario.tenants, service_url, work))
        serve = [funnelsync_bin(), "serve", "--port", str(service_port)]
        stack.enter_context(server_process(serve, env, "funnelsync serve"))
        asyncio.run(_measure(scenario, ports, service_url, env, work, outcome))
    return outcome


async def _measure(
    scenario: Scenario, ports: list[int], service_url: str, env: dict[str, str], work: Path, outcome: Outcome
) -> None:
    async with httpx.AsyncClient(base_url=service_url, headers=AUTH, timeout=120) as api:
        categories = await _bounded([connect_and_provision(api, i, port) for i, port in enumerate(ports)])
    await inject_faults(ports, scenario.faulty)
    with worker_processes(scenario.workers, env, work) as workers:
        requests_before = await healthy_requests(ports)
        cpu_before = [cpu_seconds(w.pid) for w in workers]
        began = time.monotonic()
        created = await create_deals(ports, categories, scenario)
        wanted = {key for key in created if not is_faulty(key[0])}
        done = await wait_for_tasks(ports, wanted, seconds=max(30.0, scenario.duration))
        outcome.load_seconds = (
            max(done[k] for k in wanted if k in done) - min(created.values()) if done else 0.0
        )
        elapsed = time.monotonic() - began
        outcome.cpu = [(cpu_seconds(w.pid) - c) / elapsed for w, c in zip(workers, cpu_before, strict=True)]
        outcome.rss_mb = [rss_mb(w.pid) for w in workers]
        outcome.healthy_requests = await healthy_requests(ports) - requests_before
    outcome.created = len(wanted)
    outcome.latencies = [done[k] - created[k] for k in wanted if k in done]
    outcome.missing = len(wanted) - len(outcome.latencies)
    outcome.stages = await stage_times(env["FUNNELSYNC_DATABASE_URL"])


async def stage_times(database_url: str) -> dict[str, list[float]]:
    """Where a healthy deal's time went inside FunnelSync, from its own tables: a webhook waiting in
    the inbox (received -> processed, which includes fetching the deal) and the task command in the
    outbox (queued -> done). What is left of the latency is the portal's side (sending the webhook,
    creating the task) and the bench's."""
    from sqlalchemy import select

    from app.connections.models import Connection
    from app.db import create_engine
    from app.outbox.models import OutboxCommand
    from app.webhooks.models import InboxEvent

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            healthy = select(Connection.id).where(Connection.consecutive_failures == 0)
            events = await connection.execute(
                select(InboxEvent.received_at, InboxEvent.processed_at).where(
                    InboxEvent.connection_id.in_(healthy), InboxEvent.processed_at.is_not(None)
                )
            )
            commands = await connection.execute(
                select(OutboxCommand.created_at, OutboxCommand.done_at).where(
                    OutboxCommand.connection_id.in_(healthy), OutboxCommand.done_at.is_not(None)
                )
            )
            return {
                "inbox": [(done - got).total_seconds() for got, done in events],
                "outbox": [(done - queued).total_seconds() for queued, done in commands],
            }
    finally:
        await engine.dispose()


# --- report -------------------------------------------------------------------------------------------


def report(outcomes: list[Outcome]) -> str:
    rows = []
    for o in outcomes:
        s = o.scenario
        lat = sorted(o.latencies) or [float("nan")]
        ceiling = CEILING * o.healthy
        rows.append([
            f"N={s.tenants} {s.database} x{s.workers}", f"{s.rate:g}/s for {s.duration:g} s",
            f"{percentile(lat, 0.5):.2f}", f"{percentile(lat, 0.95):.2f}", f"{percentile(lat, 0.99):.2f}",
            f"{o.created - o.missing}/{o.created}", f"{o.tasks_per_second:.1f}",
            f"{o.healthy_requests / o.load_seconds if o.load_seconds else 0:.1f} / {ceiling:g}",
            " ".join(f"{c * 100:.0f}%" for c in o.cpu), " ".join(f"{r:.0f}" for r in o.rss_mb),
        ])  # fmt: skip
    headers = [
        "run", "offered", "p50 s", "p95 s", "p99 s", "tasks", "tasks/s", "CRM req/s / ceiling",
        "CPU/worker", "RSS MB/worker",
    ]  # fmt: skip
    return table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, nargs="+", default=[10, 100, 300])
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--rate", type=float, default=20.0, help="deals created per second, all portals")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--faulty", choices=sorted(FAULT), default="503", help="what 10%% of the portals do")
    args = parser.parse_args()
    outcomes = []
    for tenants in args.tenants:
        for workers in args.workers:
            scenario = Scenario(tenants, workers, args.database, args.rate, args.duration, args.faulty)
            print(f"running {scenario} ...", flush=True)
            outcomes.append(run(scenario))
            print(report(outcomes[-1:]), flush=True)
    print()
    print(f"10% of the portals: {args.faulty}; latency and throughput are the healthy portals'.")
    print(report(outcomes))
    print()
    print("Inside FunnelSync, healthy portals (p50 / p95 s): inbox = webhook received -> processed,")
    print("outbox = task command queued -> done.")
    for o in outcomes:
        parts = [
            f"{name} {percentile(sorted(v), 0.5):.2f} / {percentile(sorted(v), 0.95):.2f} (n={len(v)})"
            for name, v in o.stages.items()
            if v
        ]
        print(f"  N={o.scenario.tenants} x{o.scenario.workers}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
