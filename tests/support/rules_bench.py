"""The rules bench: a provisioned typical funnel in each CRM sandbox, FunnelSync's receiver on a real port, and the
inbox -> rules -> outbox -> CRM loop wired by hand (the scheduler is not involved)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.connections.models import Connection
from app.deals.models import Deal
from app.funnels.models import FunnelMapping
from app.outbox.delivery import DrainResult, drain_connection
from app.outbox.models import OutboxCommand
from app.webhooks.processor import ProcessResult, process_inbox
from connectors.amocrm.sandbox.state import ADMIN_ID
from connectors.base import CRMConnector
from connectors.events import parse_deal_events
from tests.support.live import LiveFunnel, live_funnel


@dataclass
class Bench(LiveFunnel):
    state_file: Path = Path()  # where the amoCRM sandbox saves its state (read back by the tests)
    expected_hooks: int = 0  # webhooks the CRM owes us for what the test and our pushes did

    # --- a person using the CRM ---------------------------------------------------------------

    def create(self, title: str, stage: str) -> str:
        self.expected_hooks += 1
        return self.p.sandbox.create_deal(title, self.pipeline_id, self.stage_ids[stage])

    def move(self, deal_id: str, stage: str) -> None:
        self.expected_hooks += 1
        self.p.sandbox.move_deal(deal_id, self.pipeline_id, self.stage_ids[stage])

    async def edit(self, deal_id: str, stage: str | None = None, **values: Any) -> None:
        """A person edits the deal: template fields by code (datetimes as such), `loss_reason` by
        the template's reason code, and optionally the stage, in one save (one webhook)."""
        self.expected_hooks += 1
        async with self.p.sessions() as session:
            mapped = {(m.kind, m.code): m.crm_id for m in await session.scalars(select(FunnelMapping))}
        if self.crm == "bitrix24":
            fields: dict[str, Any] = {}
            for code, value in values.items():
                if code == "loss_reason":
                    uf = next(
                        u for u in self.box.state()["userfields"] if u["FIELD_NAME"] == "UF_CRM_LOSS_REASON"
                    )
                    value = uf["LIST"][0]["ID"]
                elif isinstance(value, datetime):
                    value = value.isoformat()
                fields[f"UF_CRM_{code.upper()}"] = value
            if stage is not None:
                fields["STAGE_ID"] = self.stage_ids[stage]
            self.box.control("POST", f"/_sandbox/deals/{deal_id}", {"fields": fields})
            return
        body: dict[str, Any] = {}
        custom = []
        for code, value in values.items():
            if code == "loss_reason":
                body["loss_reason_id"] = int(mapped[("loss_reason", value)])
                continue
            if isinstance(value, datetime):
                value = int(value.timestamp())
            custom.append({"field_id": int(mapped[("field", code)]), "values": [{"value": value}]})
        if custom:
            body["custom_fields_values"] = custom
        if stage is not None:
            body |= {"status_id": int(self.stage_ids[stage]), "pipeline_id": int(self.pipeline_id)}
        self.box.control("POST", f"/_sandbox/deals/{deal_id}/update", body)

    # --- what the CRM holds -------------------------------------------------------------------

    def _amo_state(self) -> dict[str, Any]:
        self.box.control("POST", "/_sandbox/save")
        data: dict[str, Any] = json.loads(self.state_file.read_text("utf-8"))
        return data

    def tasks(self, deal_id: str) -> list[dict[str, Any]]:
        """The deal's tasks as {title, responsible, deadline} whichever CRM holds them."""
        if self.crm == "bitrix24":
            rows = self.box.state()["tasks"]
            return [
                {"title": t["title"], "responsible": str(t["responsibleId"]), "deadline": t["deadline"]}
                for t in rows
                if f"D_{deal_id}" in t.get("ufCrmTask", [])
            ]
        return [
            {
                "title": t["text"].split("\n", 1)[0],
                "responsible": str(t["responsible_user_id"]),
                "deadline": t["complete_till"],
            }
            for t in self._amo_state()["tasks"]
            if str(t.get("entity_id")) == deal_id
        ]

    def comments(self, deal_id: str) -> list[str]:
        if self.crm == "bitrix24":
            return [c["COMMENT"] for c in self.box.state()["comments"] if str(c["ENTITY_ID"]) == deal_id]
        return [n["params"]["text"] for n in self._amo_state()["notes"] if str(n["entity_id"]) == deal_id]

    def stage_of(self, deal_id: str) -> str:
        codes = {v: k for k, v in self.stage_ids.items()}
        if self.crm == "bitrix24":
            deal = next(d for d in self.box.state()["deals"] if str(d["ID"]) == deal_id)
            return codes[str(deal["STAGE_ID"])]
        return codes[str(self.box.lead(deal_id)["status_id"])]

    # --- FunnelSync ---------------------------------------------------------------------------

    async def process(self) -> ProcessResult:
        """Wait for every webhook the CRM owes us, then run the inbox job (it runs the rules)."""
        assert self.hooks.wait_for(self.expected_hooks) >= self.expected_hooks, "webhooks did not arrive"
        connectors: list[CRMConnector] = []

        async def connector_for(record: Connection) -> CRMConnector:
            connectors.append(self.p.sandbox.connector())
            return connectors[-1]

        try:
            return await process_inbox(self.p.sessions, connector_for, parse_deal_events)
        finally:
            for connector in connectors:
                await connector.aclose()

    async def drain(self) -> DrainResult:
        """Deliver the outbox; every move we make comes back as one webhook (our echo)."""
        async with self.p.sessions() as session:
            record = await session.get(Connection, self.p.record.id)
            moves = await session.scalar(
                select(func.count()).where(OutboxCommand.kind == "move", OutboxCommand.status == "pending")
            )
        assert record is not None
        connector = self.p.sandbox.connector()
        try:
            result = await drain_connection(self.p.sessions, record, connector)
        finally:
            await connector.aclose()
        assert result.dead == 0 and not result.errors, result.errors
        self.expected_hooks += moves or 0
        return result

    async def cycle(self) -> None:
        await self.process()
        await self.drain()
        await self.process()  # our echoes

    async def commands(self, crm_deal_id: str, kind: str | None = None) -> list[OutboxCommand]:
        async with self.p.sessions() as session:
            query = select(OutboxCommand).join(Deal, Deal.id == OutboxCommand.deal_id)
            query = query.where(Deal.crm_deal_id == crm_deal_id).order_by(OutboxCommand.id)
            if kind is not None:
                query = query.where(OutboxCommand.kind == kind)
            return list(await session.scalars(query))

    async def deal(self, crm_deal_id: str) -> Deal:
        async with self.p.sessions() as session:
            deal = await session.scalar(select(Deal).where(Deal.crm_deal_id == crm_deal_id))
        assert deal is not None, f"deal {crm_deal_id} not mirrored"
        return deal


SUPERVISOR = {"bitrix24": "1", "amocrm": str(ADMIN_ID)}


# Import it into a conftest or test module (`from tests.support.rules_bench import bench`) to use it.
@pytest.fixture
async def bench(crm: str, database_url: str, tmp_path: Path) -> AsyncIterator[Bench]:
    state_file = tmp_path / "amocrm-state.json"
    async with live_funnel(
        crm,
        database_url,
        tmp_path,
        sandbox_options={"state_file": state_file} if crm == "amocrm" else None,
        connection_settings={"supervisor_id": SUPERVISOR[crm]},
    ) as live:
        yield Bench.extend(live, state_file=state_file)
