"""Benchmark: stage moves pushed through the outbox at the CRMs' rate limits, beside fast_bitrix24.

For each CRM sandbox (started as its own process with `funnelsync sandbox ... --speed S`): seed N deals
with the sandbox's bulk endpoint, enqueue N stage moves with app.outbox.enqueue.enqueue into a fresh
SQLite database, then call drain_connection in a loop until nothing is open. The connector runs at
the sandbox's limits scaled by the same speed factor (limits and clock scale together).
Then the same N Bitrix24 moves (to another stage) go through fast_bitrix24 against the same sandbox.

Printed per run: moves/s, the ceiling (50 moves per request x the sustained request rate x speed:
Bitrix24 2 req/s, amoCRM 7 req/s), moves/s as a fraction of it, the same after the initial burst
(the bucket starts empty, so the first `burst` requests go out at once and the whole-run figure can
exceed the sustained ceiling), the number of rate-limit rejections, and whether the CRM holds every
deal in the target stage afterwards.

    .venv/bin/python bench/push.py                  # N=10,000, speed 10
    .venv/bin/python bench/push.py --speed 1        # the real limits (about 3 minutes)
    .venv/bin/python bench/push.py --n 2000 --skip-fast-bitrix24
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from app import migrate  # noqa: E402
from app.config import Settings  # noqa: E402
from app.connections import service as connections  # noqa: E402
from app.connections.models import Connection  # noqa: E402
from app.db import create_engine, session_factory  # noqa: E402
from app.outbox.delivery import RetrySettings, drain_connection  # noqa: E402
from app.outbox.enqueue import enqueue  # noqa: E402
from app.outbox.models import OutboxCommand  # noqa: E402
from bench._common import stop_process  # noqa: E402
from connectors.amocrm.client import AmoCRMConnector  # noqa: E402
from connectors.amocrm.descriptor import AmoCRMConnectionCreate  # noqa: E402
from connectors.base import MAX_BATCH, CRMConnector  # noqa: E402
from connectors.bitrix24.client import Bitrix24Connector  # noqa: E402
from connectors.bitrix24.descriptor import Bitrix24ConnectionCreate  # noqa: E402
from connectors.http import AMOCRM_DEFAULT, BITRIX24_STANDARD, RatePolicy  # noqa: E402

SECRET_KEY = "7sGqz8pM5Y2Jw8m3b7yS0gR5tW1vN9cX4eK6hL2dQ0A="
B24_CODE = "sandboxwebhookcode1"
AMO_TOKEN = "sandbox-long-lived-token"
START_DEADLINE = 60.0


@dataclass
class Run:
    name: str
    moves: int
    seconds: float
    requests: int
    rejections: int
    ceiling: float  # moves per second
    burst: int  # requests the bucket lets through at once
    in_target: int
    steady: float | None = None  # moves/s after the burst
    dead: int = 0
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.moves / self.seconds if self.seconds else 0.0


@dataclass
class Sandbox:
    crm: str
    url: str
    speed: float
    state_file: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.url}{path}", json=body, timeout=300)
        response.raise_for_status()
        return response.json() if response.content else None

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/rest/1/{B24_CODE}/"

    def rejections(self) -> int:
        stats = self.control("GET", "/_sandbox/stats")
        if self.crm == "bitrix24":
            return int(stats["errors"].get("QUERY_LIMIT_EXCEEDED", 0))
        return int(stats["statuses"].get("429", 0))

    def stages(self) -> dict[str, str]:
        """CRM deal id -> stage id, read from the sandbox's state."""
        if self.crm == "bitrix24":
            state = self.control("GET", "/_sandbox/state")
            return {str(d["ID"]): str(d["STAGE_ID"]) for d in state["deals"]}
        self.control("POST", "/_sandbox/save")
        data = json.loads(self.state_file.read_text("utf-8"))
        return {str(k): str(v["status_id"]) for k, v in data["leads"].items()}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def sandbox_process(crm: str, speed: float, workdir: Path) -> Iterator[Sandbox]:
    """`funnelsync sandbox CRM` in its own process (so it does not share the drainer's CPU)."""
    port = _free_port()
    state_file = workdir / f"{crm}-state.json"
    command = [sys.executable, "-m", "app", "sandbox", crm, "--port", str(port), "--speed", str(speed)]
    if crm == "amocrm":
        command += ["--state-file", str(state_file)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    box = Sandbox(crm, f"http://127.0.0.1:{port}", speed, state_file, process)
    deadline = time.monotonic() + START_DEADLINE
    while True:
        try:
            box.control("GET", "/_sandbox/stats")
            break
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the {crm} sandbox did not start") from None
            time.sleep(0.1)
    try:
        yield box
    finally:
        stop_process(process)


def seed(box: Sandbox, n: int) -> tuple[list[str], str, list[str]]:
    """N deals in the main pipeline; returns (deal ids, pipeline id, process stage ids to move to)."""
    if box.crm == "bitrix24":
        body = box.control("POST", "/_sandbox/deals/bulk", {"count": n, "category_id": 0})
        ids = [str(i) for i in range(int(body["first_id"]), int(body["last_id"]) + 1)]
        return ids, "0", ["PREPARATION", "EXECUTING"]
    ids = [str(i) for i in box.control("POST", "/_sandbox/deals/bulk", {"count": n, "notify": False})["ids"]]
    headers = {"Authorization": f"Bearer {AMO_TOKEN}"}
    pipelines = httpx.get(f"{box.url}/api/v4/leads/pipelines", headers=headers, timeout=30).json()
    main = next(p for p in pipelines["_embedded"]["pipelines"] if p["is_main"])
    working = [
        str(s["id"]) for s in main["_embedded"]["statuses"] if s["type"] == 0 and s["id"] not in (142, 143)
    ]
    box.control("POST", "/_sandbox/stats/reset")
    return ids, str(main["id"]), working[1:]


def connector_for(box: Sandbox) -> tuple[CRMConnector, RatePolicy]:
    if box.crm == "bitrix24":
        rate = BITRIX24_STANDARD.scaled(box.speed)
        return Bitrix24Connector(webhook_url=box.webhook_url, rate=rate, account_key="bench:b24"), rate
    rate = AMOCRM_DEFAULT.scaled(box.speed)
    connector = AmoCRMConnector(
        "sandbox", token=AMO_TOKEN, base_url=box.url, rate=rate, account_key="bench:amo"
    )
    return connector, rate


async def outbox_run(box: Sandbox, n: int, workdir: Path) -> Run:
    ids, pipeline_id, stages = seed(box, n)
    target = stages[0]
    url = f"sqlite+aiosqlite:///{workdir / f'push-{box.crm}.db'}"
    await asyncio.to_thread(migrate.upgrade, url)  # alembic runs its own event loop
    settings = Settings(
        database_url=url, data_dir=workdir, secret_key=SecretStr(SECRET_KEY), allow_private_crm=True
    )
    data: Bitrix24ConnectionCreate | AmoCRMConnectionCreate
    if box.crm == "bitrix24":
        data = Bitrix24ConnectionCreate(name="bench", crm="bitrix24", webhook_url=box.webhook_url)
    else:
        data = AmoCRMConnectionCreate(
            name="bench", crm="amocrm", subdomain="sandbox", token=SecretStr(AMO_TOKEN), base_url=box.url
        )
    engine = create_engine(url)
    sessions = session_factory(engine)
    connector, rate = connector_for(box)
    try:
        async with sessions.begin() as session:
            record = connections.build_record(settings, data, None)
            session.add(record)
        async with sessions.begin() as session:
            for deal_id in ids:
                await enqueue(
                    session,
                    connection_id=record.id,
                    kind="move",
                    payload={"crm_deal_id": deal_id, "pipeline_id": pipeline_id, "stage_id": target},
                    idempotency_key=f"bench:move:{deal_id}",
                )
        async with sessions() as session:
            record = await session.get(Connection, record.id)  # type: ignore[assignment]
        assert record is not None
        retry = RetrySettings()
        checkpoints: list[tuple[float, int, int]] = []  # (seconds, moves delivered, requests)
        delivered = requests = dead = 0
        started = time.perf_counter()
        while True:
            result = await drain_connection(sessions, record, connector, retry=retry)
            delivered += result.delivered
            requests += result.requests
            dead += result.dead
            checkpoints.append((time.perf_counter() - started, delivered, requests))
            async with sessions() as session:
                open_ = await session.scalar(
                    select(func.count()).where(OutboxCommand.status.in_(("pending", "failed")))
                )
            if not open_:
                break
            if not (result.delivered or result.retried or result.dead):
                await asyncio.sleep(0.2)  # everything left waits for its backoff
        seconds = time.perf_counter() - started
    finally:
        await connector.aclose()
        await engine.dispose()
    held = box.stages()
    burst = _burst(box)
    return Run(
        name=f"FunnelSync outbox -> {box.crm}",
        moves=delivered,
        seconds=seconds,
        requests=requests,
        rejections=box.rejections(),
        ceiling=MAX_BATCH * rate.per_second,
        burst=burst,
        in_target=sum(1 for d in ids if held.get(d) == target),
        steady=_steady(checkpoints, burst),
        dead=dead,
    )


def _burst(box: Sandbox) -> int:
    return 50 if box.crm == "bitrix24" else 7


def _steady(checkpoints: list[tuple[float, int, int]], burst: int) -> float | None:
    """Moves/s from the first checkpoint past the burst to the end."""
    first = next((c for c in checkpoints if c[2] >= burst), None)
    last = checkpoints[-1]
    if first is None or last[0] <= first[0]:
        return None
    return (last[1] - first[1]) / (last[0] - first[0])


async def fast_bitrix24_run(box: Sandbox, ids: list[str], stage: str) -> Run:
    from fast_bitrix24 import BitrixAsync

    # The sandbox's bucket drains at 2 x speed per second: let what the outbox run left drain out.
    await asyncio.sleep(50 / (2 * box.speed) + 1)
    box.control("POST", "/_sandbox/stats/reset")
    client = BitrixAsync(
        box.webhook_url, verbose=False, requests_per_second=2.0 * box.speed, request_pool_size=50, ssl=False
    )
    items = [{"entityTypeId": 2, "id": int(d), "fields": {"categoryId": 0, "stageId": stage}} for d in ids]
    loop = asyncio.get_running_loop()
    # fast_bitrix24 leaves failed request tasks unretrieved when it gives up (printed when they are
    # collected, up to the end of the run): keep them off stderr.
    loop.set_exception_handler(lambda _loop, _context: None)
    error = None
    started = time.perf_counter()
    try:
        await client.call("crm.item.update", items)
    except Exception as exc:  # a bench reports a client that gives up instead of crashing
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    stats = box.control("GET", "/_sandbox/stats")
    held = box.stages()
    return Run(
        name="fast_bitrix24 -> bitrix24",
        moves=int(stats["commands"].get("crm.item.update", 0)),
        seconds=seconds,
        requests=int(stats["by_method"].get("batch", 0)),
        rejections=box.rejections(),
        ceiling=MAX_BATCH * 2.0 * box.speed,
        burst=50,
        in_target=sum(1 for d in ids if held.get(d) == stage),
        error=error,
    )


def report(runs: list[Run], n: int, speed: float) -> str:
    headers = ["run", "moves", "s", "requests", "moves/s", "ceiling", "fraction", "after burst", "429s", "ok"]
    rows = []
    for r in runs:
        steady = f"{r.steady / r.ceiling:.2f}" if r.steady else "-"
        ok = "yes" if r.in_target == n and r.moves == n and not r.dead else f"NO ({r.in_target}/{n})"
        rows.append(
            [r.name, r.moves, f"{r.seconds:.1f}", r.requests, f"{r.rate:.0f}", f"{r.ceiling:.0f}",
             f"{r.rate / r.ceiling:.2f}", steady, r.rejections, ok]
        )  # fmt: skip
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    errors = [f"{r.name}: {r.error}" for r in runs if r.error]
    return "\n".join([f"{n} stage moves, speed {speed:g} (ceilings scaled by it)", *lines, *errors])


async def main(args: argparse.Namespace) -> None:
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="funnelsync-push-") as tmp:
        workdir = Path(tmp)
        os.environ.setdefault("FUNNELSYNC_DATA_DIR", str(workdir))
        for crm in args.crms:
            with sandbox_process(crm, args.speed, workdir) as box:
                run = await outbox_run(box, args.n, workdir)
                runs.append(run)
                print(report([run], args.n, args.speed), flush=True)
                if crm == "bitrix24" and not args.skip_fast_bitrix24:
                    ids = sorted(box.stages(), key=int)[-args.n :]
                    runs.append(await fast_bitrix24_run(box, ids, "EXECUTING"))
                    print(report(runs[-1:], args.n, args.speed), flush=True)
    print()
    print(report(runs, args.n, args.speed))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="stage moves per run")
    parser.add_argument("--speed", type=float, default=10.0, help="sandbox speed factor (1 = real limits)")
    parser.add_argument("--crms", nargs="+", default=["bitrix24", "amocrm"], choices=["bitrix24", "amocrm"])
    parser.add_argument("--skip-fast-bitrix24", action="store_true")
    asyncio.run(main(parser.parse_args()))
