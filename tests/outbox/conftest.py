"""The outbox against each CRM sandbox over real HTTP, on each database: seed deals in the sandbox,
enqueue commands with app.outbox.enqueue.enqueue, drain with drain_connection, and read back what
the CRM holds (deal stages, tasks) to check every command took effect exactly once.

Retries are driven without sleeping: commands that failed are made due (next_attempt_at set to the
past in the database) and drain_connection is called again."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections.models import Connection
from app.main import create_app
from app.outbox.delivery import DrainResult, RetrySettings, drain_connection
from app.outbox.enqueue import enqueue
from app.outbox.models import OutboxCommand
from connectors.base import CRMConnector, NewStage, Pipeline
from connectors.http import RetryPolicy
from tests.support import web
from tests.support.crm import CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

# The connector's own retries (inside one drain): few and fast, so an outage outlasts them and the
# outbox's retries (across drains) are what carries the commands through.
CONNECTOR_RETRY = RetryPolicy(attempts=3, max_elapsed=20, base_delay=0.01, max_delay=0.05)
# The outbox's backoff: no delay, so a failed command is due at once for the next drain.
NO_DELAY = RetrySettings(base_delay=timedelta(0), max_delay=timedelta(0))
DUE = datetime(2000, 1, 1, tzinfo=UTC)
# A sandbox fault that stands for the CRM being down (503 from the gateway).
OUTAGE_FAULT = {"bitrix24": "http_503", "amocrm": "http_503"}
API_AUTH = {"Authorization": "Bearer test-token-1234567890"}


@dataclass
class Outbox:
    sandbox: CRMSandbox
    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    connection_id: int
    pipeline: Pipeline  # the main pipeline: seeded deals start in its first stage
    state_file: Path
    connectors: list[CRMConnector] = field(default_factory=list)
    _keys: int = 0

    @property
    def crm(self) -> str:
        return self.sandbox.crm

    @property
    def box(self) -> Any:
        return self.sandbox.box

    @property
    def stages(self) -> list[str]:
        """Process stages of the main pipeline other than the one deals are seeded in."""
        return [s.id for s in self.pipeline.stages if s.semantics == "process" and s.editable][1:]

    def connector(self, **options: Any) -> CRMConnector:
        options.setdefault("retry", CONNECTOR_RETRY)
        connector = self.sandbox.connector(**options)
        self.connectors.append(connector)
        return connector

    # --- the CRM ------------------------------------------------------------------------------

    def seed(self, count: int) -> list[str]:
        """`count` deals in the main pipeline's first stage, created silently (an import)."""
        if self.crm == "bitrix24":
            body = self.box.control(
                "POST", "/_sandbox/deals/bulk", {"count": count, "category_id": int(self.pipeline.id)}
            )
            return [str(i) for i in range(int(body["first_id"]), int(body["last_id"]) + 1)]
        return [str(i) for i in self.box.create_leads(count, pipeline_id=int(self.pipeline.id))]

    def delete_deal(self, deal_id: str) -> None:
        if self.crm == "bitrix24":
            self.box.control("DELETE", f"/_sandbox/deals/{deal_id}")
        else:
            self.box.control("POST", f"/_sandbox/deals/{deal_id}/delete")

    async def foreign_stage(self) -> str:
        """A stage of another pipeline (moving a main-pipeline deal there is a validation error)."""
        connector = self.connector()
        other = await connector.create_pipeline(
            "Другая воронка", 900, [NewStage("ELSEWHERE", "Где-то", 10, "#fffeb2")]
        )
        stages = other.stages or tuple(
            next(p for p in await connector.list_pipelines() if p.id == other.id).stages
        )
        return next(s.id for s in stages if s.semantics == "process" and s.editable)

    def _state(self) -> dict[str, Any]:
        if self.crm == "bitrix24":
            result: dict[str, Any] = self.box.state()
            return result
        self.box.control("POST", "/_sandbox/save")
        data: dict[str, Any] = json.loads(self.state_file.read_text("utf-8"))
        return data

    def stages_of(self) -> dict[str, str]:
        """CRM deal id -> the stage the CRM has it in."""
        state = self._state()
        if self.crm == "bitrix24":
            return {str(d["ID"]): str(d["STAGE_ID"]) for d in state["deals"]}
        return {str(lead_id): str(lead["status_id"]) for lead_id, lead in state["leads"].items()}

    def tasks(self) -> Counter[tuple[str, str]]:
        """(CRM deal id, task title) -> how many such tasks the CRM holds."""
        state = self._state()
        if self.crm == "bitrix24":
            return Counter(
                (binding.removeprefix("D_"), str(t["title"]))
                for t in state["tasks"]
                for binding in t["ufCrmTask"]
            )
        return Counter((str(t["entity_id"]), str(t["text"]).split("\n", 1)[0]) for t in state["tasks"])

    def comments(self) -> Counter[tuple[str, str]]:
        """(CRM deal id, comment text without our marker) -> how many such comments the CRM holds."""
        state = self._state()
        if self.crm == "bitrix24":
            rows = [(str(c["ENTITY_ID"]), str(c["COMMENT"])) for c in state["comments"]]
        else:
            rows = [(str(n["entity_id"]), str(n["params"]["text"])) for n in state["notes"]]
        return Counter((deal, text.split("\n[fs:", 1)[0]) for deal, text in rows)

    def applied_writes(self, kind: str) -> int:
        """How many items of `kind` the CRM executed (rejected requests do not count)."""
        if self.crm == "bitrix24":
            method = {"move": "crm.item.update", "task": "tasks.task.add"}[kind]
            return int(self.box.stats()["commands"].get(method, 0))
        route = {"move": "PATCH /api/v4/leads", "task": "POST /api/v4/tasks"}[kind]
        return sum(
            e["batch"] or 0 for e in self.box.requests() if e["route"] == route and e.get("status") == 200
        )

    def rejections(self) -> Counter[str]:
        """Error answers the sandbox gave, by code (Bitrix24) or HTTP status (amoCRM)."""
        stats = self.box.stats()
        if self.crm == "bitrix24":
            return Counter({str(k): int(v) for k, v in stats["errors"].items()})
        return Counter({k: int(v) for k, v in stats["statuses"].items() if not k.startswith("2")})

    # --- the outbox ---------------------------------------------------------------------------

    async def enqueue_moves(self, deal_ids: Sequence[str], stage_id: str) -> list[int]:
        return await self._enqueue(
            "move",
            [
                (d, {"crm_deal_id": d, "pipeline_id": self.pipeline.id, "stage_id": stage_id})
                for d in deal_ids
            ],
        )

    async def enqueue_tasks(self, deal_ids: Sequence[str], title: str) -> list[int]:
        due = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0).isoformat()
        return await self._enqueue(
            "task", [(d, {"crm_deal_id": d, "title": title, "due_at": due}) for d in deal_ids]
        )

    async def enqueue_comment(self, deal_id: str, text: str, *, after: int | None = None) -> int:
        """A comment on the deal; `after`: the command it must wait for (e.g. the move it describes)."""
        [command_id] = await self._enqueue(
            "comment", [(deal_id, {"crm_deal_id": deal_id, "text": text})], after=after
        )
        return command_id

    async def _enqueue(
        self, kind: str, items: list[tuple[str, dict[str, Any]]], *, after: int | None = None
    ) -> list[int]:
        keys = []
        async with self.sessions.begin() as session:
            for deal_id, payload in items:
                self._keys += 1
                key = f"test:{kind}:{deal_id}:{self._keys}"
                keys.append(key)
                assert await enqueue(
                    session,
                    connection_id=self.connection_id,
                    kind=kind,
                    payload=payload,
                    idempotency_key=key,
                    after_command_id=after,
                )
        async with self.sessions() as session:
            rows = await session.execute(
                select(OutboxCommand.idempotency_key, OutboxCommand.id).where(
                    OutboxCommand.idempotency_key.in_(keys)
                )
            )
            ids = {key: command_id for key, command_id in rows}
        return [ids[k] for k in keys]

    async def record(self) -> Connection:
        async with self.sessions() as session:
            record = await session.get(Connection, self.connection_id)
        assert record is not None
        return record

    async def commands(self, ids: Sequence[int] | None = None) -> list[OutboxCommand]:
        async with self.sessions() as session:
            query = select(OutboxCommand).order_by(OutboxCommand.id)
            if ids is not None:
                query = query.where(OutboxCommand.id.in_(list(ids)))
            return list(await session.scalars(query))

    async def open_count(self) -> int:
        async with self.sessions() as session:
            count = await session.scalar(
                select(func.count()).where(OutboxCommand.status.in_(("pending", "sending", "failed")))
            )
        return int(count or 0)

    async def make_due(self) -> None:
        """Every command waiting for a retry is due now (stands in for the backoff passing)."""
        async with self.sessions.begin() as session:
            await session.execute(
                update(OutboxCommand)
                .where(OutboxCommand.status.in_(("pending", "failed")))
                .values(next_attempt_at=DUE)
            )

    async def drain(
        self, connector: CRMConnector, retry: RetrySettings = NO_DELAY, max_rounds: int = 30
    ) -> list[DrainResult]:
        """drain_connection until nothing is open (or the connection is paused), each round with the
        failed commands made due; the bound on rounds keeps a broken outbox from looping forever."""
        results: list[DrainResult] = []
        for _ in range(max_rounds):
            record = await self.record()
            if record.status != "active":
                break
            results.append(await drain_connection(self.sessions, record, connector, retry=retry))
            if results[-1].paused or not await self.open_count():
                break
            await self.make_due()
        return results

    async def resume(self) -> dict[str, Any]:
        """What an operator does once the CRM side is fixed: POST /api/connections/{name}/resume."""
        with serve_asgi(create_app(self.settings)) as url:
            async with web.async_client(base_url=url, headers=API_AUTH, timeout=30) as api:
                response = await api.post(f"/api/connections/{self.crm}/resume")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
async def outbox(crm: str, database_url: str, tmp_path: Path) -> AsyncIterator[Outbox]:
    async with open_outbox(crm, database_url, tmp_path) as box:
        yield box


@asynccontextmanager
async def open_outbox(crm: str, database_url: str, tmp_path: Path) -> AsyncIterator[Outbox]:
    """A sandbox of `crm` with one connection to it in a fresh database (other suites' fixtures too)."""
    settings = settings_for(tmp_path, database_url)
    state_file = tmp_path / "amocrm-state.json"
    options: dict[str, Any] = {"state_file": state_file} if crm == "amocrm" else {}
    with crm_sandbox(crm, **options) as sandbox:
        async with open_sessions(database_url) as sessions:
            record = sandbox.connection(settings, name=crm)
            async with sessions.begin() as session:
                session.add(record)
            probe = sandbox.connector()
            try:
                pipeline = next(p for p in await probe.list_pipelines() if p.is_main)
            finally:
                await probe.aclose()
            box = Outbox(sandbox, sessions, settings, record.id, pipeline, state_file)
            try:
                yield box
            finally:
                for connector in box.connectors:
                    await connector.aclose()
