"""The whole sync path against each sandbox: a person changes deals in the CRM, the CRM posts
webhooks to the real receiver, the inbox processor mirrors them in order; what the CRM never sent
is caught up by the reconciler, deletions included. Both databases, real HTTP throughout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from app.connections.models import Connection
from app.deals.models import Deal, SyncState
from app.deals.reconcile import reconcile
from app.deals.service import get_deal
from app.outbox.delivery import drain_connection
from app.webhooks.models import InboxEvent
from app.webhooks.processor import process_inbox
from connectors.base import CRMConnector, DealSnapshot, NewStage, Retryable
from connectors.events import parse_deal_events
from tests.support import web
from tests.support.live import LiveFunnel, live_funnel
from tests.support.matrix import each_crm_on_one_database


@dataclass
class Flow(LiveFunnel):
    actions: int = 0  # webhooks the CRM owes us for what the test did

    # --- a person using the CRM ---------------------------------------------------------------

    def create(self, title: str, stage: str) -> str:
        self.actions += 1
        return self.p.sandbox.create_deal(title, self.pipeline_id, self.stage_ids[stage])

    def move(self, deal_id: str, stage: str) -> None:
        self.move_to_crm_stage(deal_id, self.stage_ids[stage])

    def move_to_crm_stage(self, deal_id: str, crm_stage_id: str) -> None:
        self.actions += 1
        self.p.sandbox.move_deal(deal_id, self.pipeline_id, crm_stage_id)

    def delete(self, deal_id: str, *, silently: bool = False) -> None:
        if not silently:
            self.actions += 1
        if self.crm == "bitrix24":
            self.box.control("DELETE", f"/_sandbox/deals/{deal_id}")
        else:
            self.box.control("POST", f"/_sandbox/deals/{deal_id}/delete")

    def seed_silently(self, count: int) -> None:
        """Deals the CRM creates without telling anyone (an import, a lost webhook)."""
        if self.crm == "bitrix24":
            self.box.control(
                "POST", "/_sandbox/deals/bulk", {"count": count, "category_id": int(self.pipeline_id)}
            )
        else:
            self.box.control(
                "POST",
                "/_sandbox/deals/bulk",
                {"count": count, "notify": False, "pipeline_id": int(self.pipeline_id),
                 "status_id": int(self.stage_ids["LEADS"])},
            )  # fmt: skip

    def stop_webhooks(self) -> None:
        if self.crm == "bitrix24":
            self.box.control("POST", "/_sandbox/config", {"webhook_url": None})
        else:
            for hook in self.box.api("GET", "/api/v4/webhooks").json()["_embedded"]["webhooks"]:
                self.box.api("DELETE", "/api/v4/webhooks", json={"destination": hook["destination"]})

    # --- FunnelSync ---------------------------------------------------------------------------

    async def deliver_and_process(self) -> None:
        """Wait until every action's webhook reached the receiver, then run the inbox job."""
        assert self.hooks.wait_for(self.actions) >= self.actions, "webhooks did not arrive"
        assert set(self.hooks.statuses) == {200}
        connectors: list[CRMConnector] = []

        async def connector_for(record: Connection) -> CRMConnector:
            connectors.append(self.p.sandbox.connector())
            return connectors[-1]

        try:
            await process_inbox(self.p.sessions, connector_for, parse_deal_events)
        finally:
            for connector in connectors:
                await connector.aclose()

    async def history(self, crm_deal_id: str) -> list[tuple[str | None, str | None]]:
        async with self.p.sessions() as session:
            deal_id = await session.scalar(select(Deal.id).where(Deal.crm_deal_id == crm_deal_id))
            assert deal_id is not None, f"deal {crm_deal_id} not mirrored"
            detail = await get_deal(session, deal_id)
        return [(h.from_stage, h.to_stage) for h in detail.history]

    async def deal(self, crm_deal_id: str) -> Deal | None:
        async with self.p.sessions() as session:
            return await session.scalar(select(Deal).where(Deal.crm_deal_id == crm_deal_id))


@pytest.fixture
async def flow(crm: str, database_url: str, tmp_path: Path) -> AsyncIterator[Flow]:
    async with live_funnel(crm, database_url, tmp_path) as live:
        yield Flow.extend(live)


@each_crm_on_one_database(crossed=True)
async def test_changes_reach_the_mirror_once_and_in_order(flow: Flow) -> None:
    first = flow.create("Первая сделка", "LEADS")
    await flow.deliver_and_process()
    for stage in ("NEW_REQUEST", "QUALIFIED", "WON"):
        flow.move(first, stage)
        await flow.deliver_and_process()
    second = flow.create("Вторая сделка", "NEW_REQUEST")
    doomed = flow.create("Удалить", "LEADS")
    await flow.deliver_and_process()
    flow.delete(doomed)
    await flow.deliver_and_process()

    assert await flow.history(first) == [
        (None, "LEADS"),
        ("LEADS", "NEW_REQUEST"),
        ("NEW_REQUEST", "QUALIFIED"),
        ("QUALIFIED", "WON"),
    ]
    assert await flow.history(second) == [(None, "NEW_REQUEST")]
    gone = await flow.deal(doomed)
    assert gone is not None and gone.deleted_at is not None
    async with flow.p.sessions() as session:
        statuses = list(await session.scalars(select(InboxEvent.status)))
    assert statuses and set(statuses) == {"processed"}

    # Processing again changes nothing: every event is done, every deal is as it was.
    await flow.deliver_and_process()
    assert len(await flow.history(first)) == 4


@each_crm_on_one_database()
async def test_reconcile_catches_up_missed_changes_and_deletions(flow: Flow) -> None:
    kept = flow.create("Сделка", "LEADS")
    await flow.deliver_and_process()
    flow.seed_silently(5)
    result = await reconcile(flow.p.sessions, flow.p.record.id, flow.p.sandbox.connector())
    assert result.full  # no cursor yet: the first run walks everything
    assert result.created == 5 and result.deals_seen == 6 and result.cursor is not None
    async with flow.p.sessions() as session:
        managed = list(await session.scalars(select(Deal).where(Deal.managed.is_(True))))
    assert len(managed) == 6

    flow.stop_webhooks()
    flow.delete(kept, silently=True)
    incremental = await reconcile(flow.p.sessions, flow.p.record.id, flow.p.sandbox.connector())
    assert not incremental.full and incremental.created == 0
    assert (await flow.deal(kept)).deleted_at is None  # type: ignore[union-attr]  # incremental cannot see deletions
    full = await reconcile(flow.p.sessions, flow.p.record.id, flow.p.sandbox.connector(), full=True)
    assert full.deleted == 1 and full.deals_seen == 5
    assert (await flow.deal(kept)).deleted_at is not None  # type: ignore[union-attr]


class _CutOffPull:
    """A connector whose incremental pull dies after its first (half) page: the CRM went away
    mid-run. Pages come in id order, so what was not pulled may be older than what was."""

    def __init__(self, connector: CRMConnector) -> None:
        self.connector = connector

    async def list_deals_modified_since(self, since: datetime) -> AsyncIterator[list[DealSnapshot]]:
        async for page in self.connector.list_deals_modified_since(since):
            yield page[: len(page) // 2]
            raise Retryable("the CRM went away mid-pull")


@each_crm_on_one_database(crossed=True)
async def test_incremental_cursor_moves_only_after_the_whole_pull(flow: Flow) -> None:
    flow.seed_silently(1)
    first = await reconcile(flow.p.sessions, flow.p.record.id, flow.p.sandbox.connector())
    assert first.cursor is not None
    flow.stop_webhooks()
    flow.seed_silently(6)
    connector = flow.p.sandbox.connector()
    with pytest.raises(Retryable):
        await reconcile(flow.p.sessions, flow.p.record.id, _CutOffPull(connector))  # type: ignore[arg-type]
    async with flow.p.sessions() as session:
        state = await session.get(SyncState, flow.p.record.id)
        mirrored = len(list(await session.scalars(select(Deal.id))))
    assert state is not None and state.cursor == first.cursor  # the cut-off run did not move it
    assert 1 < mirrored < 7  # half a page landed before the cut
    # The next run starts from the old cursor and so finds every deal the cut-off run missed.
    again = await reconcile(flow.p.sessions, flow.p.record.id, connector)
    async with flow.p.sessions() as session:
        assert len(list(await session.scalars(select(Deal.id)))) == 7
    assert again.cursor is not None and again.cursor >= first.cursor


@each_crm_on_one_database()
async def test_status_and_deal_api(flow: Flow) -> None:
    deal = flow.create("Сделка для API", "LEADS")
    await flow.deliver_and_process()
    flow.move(deal, "NEW_REQUEST")
    await flow.deliver_and_process()
    # A stage someone adds in the CRM by hand: deals in it are kept with the raw id and flagged.
    connector = flow.p.sandbox.connector()
    try:
        [hand] = await connector.add_stages(flow.pipeline_id, [NewStage("HANDMADE", "Ручной", 95, "#f2f3f4")])
    finally:
        await connector.aclose()
    stray = flow.create("В ручном этапе", "LEADS")
    await flow.deliver_and_process()
    flow.move_to_crm_stage(stray, hand.id)
    await flow.deliver_and_process()

    headers = {"Authorization": "Bearer test-token-1234567890"}
    async with web.async_client(base_url=flow.url, headers=headers) as api:
        status = (await api.get(f"/api/connections/{flow.crm}/status")).json()
        assert status["events"].get("processed", 0) >= 4 and status["inbox_lag_seconds"] == 0
        assert status["last_webhook_at"] is not None and status["deals"] == 2
        assert status["unknown_stages"] == [
            {"crm_pipeline_id": flow.pipeline_id, "crm_stage_id": hand.id, "deals": 1}
        ]
        listed = (await api.get("/api/deals", params={"connection": flow.crm, "stage": "NEW_REQUEST"})).json()
        assert listed["total"] == 1 and listed["items"][0]["crm_deal_id"] == deal
        assert (await api.get("/api/deals", params={"funnel": "general.typical"})).json()["total"] == 2
        detail = (await api.get(f"/api/deals/{listed['items'][0]['id']}")).json()
        assert [(h["from_stage"], h["to_stage"]) for h in detail["history"]] == [
            (None, "LEADS"),
            ("LEADS", "NEW_REQUEST"),
        ]
        assert (await api.get("/api/deals/999999")).status_code == 404
        events = (await api.get("/api/events", params={"status": "processed", "connection": flow.crm})).json()
        assert events and all(e["status"] == "processed" for e in events)


@each_crm_on_one_database(crossed=True)
async def test_manual_move_is_pushed_to_the_crm_and_mirrored(flow: Flow) -> None:
    deal = flow.create("Двигаем вручную", "LEADS")
    await flow.deliver_and_process()
    local = await flow.deal(deal)
    assert local is not None
    headers = {"Authorization": "Bearer test-token-1234567890", "Idempotency-Key": "req-1"}
    async with web.async_client(base_url=flow.url, headers=headers) as api:
        refused = await api.post(f"/api/deals/{local.id}/move", json={"stage": "QUALIFIED"})
        assert refused.status_code == 409 and "requires" in refused.json()["detail"]  # the budget is empty
        queued = await api.post(f"/api/deals/{local.id}/move", json={"stage": "NEW_REQUEST"})
        assert queued.status_code == 202 and queued.json()["status"] == "pending"
        again = await api.post(f"/api/deals/{local.id}/move", json={"stage": "NEW_REQUEST"})
        assert again.json()["id"] == queued.json()["id"]  # same Idempotency-Key: one move
        bad = await api.post(f"/api/deals/{local.id}/move", json={"stage": "NOPE"})
        assert bad.status_code == 409 and "'NOPE' is not a provisioned stage" in bad.json()["detail"]
        assert (await api.post("/api/deals/999999/move", json={"stage": "WON"})).status_code == 404

    connector = flow.p.sandbox.connector()
    try:
        result = await drain_connection(flow.p.sessions, flow.p.record, connector)
    finally:
        await connector.aclose()
    assert result.delivered == 1
    flow.actions += 1  # the CRM posts a webhook for our own move
    await flow.deliver_and_process()
    assert (await flow.history(deal))[-1] == ("LEADS", "NEW_REQUEST")
    async with web.async_client(base_url=flow.url, headers=headers) as api:
        commands = (await api.get("/api/outbox", params={"deal_id": local.id})).json()
    assert [c["status"] for c in commands if c["kind"] == "move"] == ["done"]
    async with web.async_client(base_url=flow.url, headers=headers) as api:
        detail = (await api.get(f"/api/deals/{local.id}")).json()
    assert [(c["kind"], c["status"]) for c in detail["commands"] if c["kind"] == "move"] == [("move", "done")]


@each_crm_on_one_database()
async def test_metrics_expose_events_queues_and_push_latency(flow: Flow) -> None:
    deal = flow.create("Метрики", "LEADS")
    await flow.deliver_and_process()
    local = await flow.deal(deal)
    assert local is not None
    headers = {"Authorization": "Bearer test-token-1234567890"}
    async with web.async_client(base_url=flow.url, headers=headers) as api:
        assert (
            await api.post(f"/api/deals/{local.id}/move", json={"stage": "NEW_REQUEST"})
        ).status_code == 202
        connector = flow.p.sandbox.connector()
        try:
            await drain_connection(flow.p.sessions, flow.p.record, connector)
        finally:
            await connector.aclose()
        text = (await api.get("/metrics")).text
    # The CRM posts a webhook for our own move: take it in, so none is left in flight when the
    # sandbox stops (its delivery retries would hold the teardown for seconds).
    flow.actions += 1
    await flow.deliver_and_process()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("funnelsync_outbox_commands", (("status", "done"),))] == 1
    assert samples[("funnelsync_outbox_commands", (("status", "pending"),))] == 0
    assert samples[("funnelsync_inbox_events", (("status", "processed"),))] >= 1
    accepted = (("crm", flow.crm), ("outcome", "accepted"))
    assert samples[("funnelsync_webhook_events_received_total", accepted)] >= 1
    assert samples[("funnelsync_push_latency_seconds_count", (("kind", "move"),))] >= 1
