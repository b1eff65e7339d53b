"""Real processes: what was acknowledged survives SIGKILL; two workers on one PostgreSQL process
every event exactly once. `serve` and `worker --once` run as the user runs them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from app.connections import service as connections
from app.deals.models import Deal, StageTransition
from app.webhooks.models import InboxEvent
from connectors.amocrm.descriptor import AmoCRMConnectionCreate
from tests.support import web
from tests.support.cli import REPO
from tests.support.crm import settings_for
from tests.support.db import open_sessions
from tests.support.postgres import PostgresServer
from tests.support.server import free_port

SECRET_KEY = "7sGqz8pM5Y2Jw8m3b7yS0gR5tW1vN9cX4eK6hL2dQ0A="
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def env_for(database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "FUNNELSYNC_DATABASE_URL": database_url,
        "FUNNELSYNC_DATA_DIR": str(tmp_path),
        "FUNNELSYNC_ALLOW_PRIVATE_CRM": "true",  # the sandboxes run on 127.0.0.1
        "FUNNELSYNC_SECRET_KEY": SECRET_KEY,
        "FUNNELSYNC_API_TOKEN": "test-token-1234567890",
        **extra,
    }


def add_amo_connection(database_url: str, tmp_path: Path, name: str = "amo") -> str:
    """Store an amoCRM connection; returns its webhook URL path (with the secret)."""
    settings = settings_for(tmp_path, database_url)
    record = connections.build_record(
        settings,
        AmoCRMConnectionCreate(name=name, crm="amocrm", subdomain="acme", token=SecretStr("t")),
        None,
    )

    async def add() -> None:
        async with open_sessions(database_url) as sessions, sessions.begin() as session:
            session.add(record)

    asyncio.run(add())
    return f"/webhooks/amocrm/{name}/{connections.credentials(settings, record)['webhook_secret']}"


def lead_event(lead_id: int, status_id: int, modified: int) -> str:
    """One amoCRM status webhook, shaped like the real capture (docs/crm/amocrm.md §7)."""
    prefix = "leads[status][0]"
    return urlencode(
        {
            f"{prefix}[id]": str(lead_id),
            f"{prefix}[status_id]": str(status_id),
            f"{prefix}[pipeline_id]": "3",
            f"{prefix}[name]": f"Lead {lead_id}",
            f"{prefix}[price]": "100",
            f"{prefix}[last_modified]": str(modified),
            f"{prefix}[date_create]": "1700000000",
            "account[subdomain]": "acme",
            "account[id]": "29085955",
        }
    )


@contextmanager
def serving(database_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`funnelsync serve` as a real process with its scheduler off (so events stay pending)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        env=env_for(database_url, tmp_path, FUNNELSYNC_SCHEDULER_ENABLED="false"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:  # blocks until uvicorn says it is listening
        if "Application startup complete" in line:
            break
    else:
        pytest.fail(f"serve exited with {process.wait()}")
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with serving(database_url, tmp_path) as running:
        yield running


def count(database_url: str, *columns: object) -> int:
    async def run() -> int:
        async with open_sessions(database_url) as sessions, sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(*columns)) or 0)  # type: ignore[arg-type]

    return asyncio.run(run())


def worker_once(database_url: str, tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app", "worker", "--once"],
        env=env_for(database_url, tmp_path),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow(seconds=5)  # starts and kills service processes
def test_acknowledged_events_survive_sigkill(
    database_url: str, tmp_path: Path, served: tuple[subprocess.Popen[str], str]
) -> None:
    process, url = served
    path = add_amo_connection(database_url, tmp_path)
    with web.client(base_url=url, headers=FORM) as client:
        for lead in range(1, 41):
            assert client.post(path, content=lead_event(lead, 30, 1700000000 + lead)).status_code == 200
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert count(database_url, InboxEvent) == 40  # every acknowledged event was committed

    worker = worker_once(database_url, tmp_path)
    stdout, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 0, stderr
    assert '"events_processed": 40' in stdout
    assert count(database_url, Deal) == 40


@pytest.mark.slow(seconds=10)
@pytest.mark.postgres
def test_two_workers_on_one_postgresql_process_each_event_once(
    postgres: PostgresServer, tmp_path: Path, served_pg: tuple[str, str]
) -> None:
    database_url, url = served_pg
    paths = [add_amo_connection(database_url, tmp_path, name=f"amo{i}") for i in range(4)]
    with web.client(base_url=url, headers=FORM) as client:
        for lead in range(1, 101):
            for step, status in enumerate((30, 31)):  # every lead moves once: two events each
                body = lead_event(lead, status, 1700000000 + lead * 10 + step)
                assert client.post(paths[lead % 4], content=body).status_code == 200
    assert count(database_url, InboxEvent) == 200
    workers = [worker_once(database_url, tmp_path) for _ in range(2)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr

    async def check() -> tuple[list[int], int, int]:
        async with open_sessions(database_url) as sessions, sessions() as session:
            attempts = list(await session.scalars(select(InboxEvent.attempts)))
            statuses = set(await session.scalars(select(InboxEvent.status)))
            assert statuses == {"processed"}
            deals = int(await session.scalar(select(func.count()).select_from(Deal)) or 0)
            transitions = int(await session.scalar(select(func.count()).select_from(StageTransition)) or 0)
            return attempts, deals, transitions

    attempts, deals, transitions = asyncio.run(check())
    assert len(attempts) == 200 and set(attempts) == {1}  # each event processed exactly once
    assert deals == 100 and transitions == 200  # created + one move per lead, no duplicates


@pytest.fixture
def served_pg(postgres: PostgresServer, tmp_path: Path) -> Iterator[tuple[str, str]]:
    from app.migrate import upgrade

    database_url = postgres.create_database(f"procs{os.getpid()}")
    upgrade(database_url)
    with serving(database_url, tmp_path) as (_, url):
        yield database_url, url
